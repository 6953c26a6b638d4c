"""Build a variant's model: the recipes (each variant's Hugging Face calls as the transformers and peft docs write
them), the one step that fits any loaded model to this machine and to the records, and the guards around
bitsandbytes' 4-bit layers."""

from __future__ import annotations

import contextlib
import logging

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig, set_seed

from peft_sentiment.config import Config
from peft_sentiment.hardware import cpu_has_native_bf16, resolve_compute_dtype

NF4_EMBEDDING_DTYPE = "bfloat16"  # what a quantized model stores its embedding tables in (store_embeddings_16bit)
CLASSIFIER_HEADS = ("score.", "classifier.")  # what AutoModelForSequenceClassification adds to a language model
# GPT-2's "gelu_new" is the tanh GELU written as eight elementwise ops, each a pass over the MLP's widest activations
# that autograd keeps for backward; torch's fused kernel computes the same function (within 5e-7 in fp32;
# tests/test_models.py) in one pass and keeps only its input. SmolLM2's SiLU needs nothing.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


def make_lora_config(cfg: Config, model_type: str) -> LoraConfig:
    """LoRA of rank r on every linear layer below the head (or on `cfg.lora_targets`) of a `model_type` model."""
    return LoraConfig(
        task_type="SEQ_CLS",  # the new head (`score`) trains in full and is saved with the adapter
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,  # the update is scaled by alpha / r
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets) if cfg.lora_targets else "all-linear",  # every attention and MLP projection
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D layers store their weight as (in, out)
    )


def make_nf4_config(cfg: Config) -> BitsAndBytesConfig:
    """4-bit NF4 with the profile's double quantization, compute dtype and layers kept unquantized."""
    return BitsAndBytesConfig(
        load_in_4bit=True,  # every linear layer below the head quantized while loading
        bnb_4bit_quant_type="nf4",  # 16 levels placed at a normal distribution's quantiles: weights are roughly normal
        bnb_4bit_use_double_quant=cfg.nf4_double_quant,  # quantize the per-block scales too (~0.4 bit per weight saved)
        # matmuls de-quantize to this dtype: "auto" follows the run's precision (bf16, fp16 on a T4, fp32)
        bnb_4bit_compute_dtype=getattr(torch, resolve_compute_dtype(cfg.nf4_compute_dtype, cfg.precision)),
        # None: transformers' default (the head); a list replaces it, so it names the head too
        llm_int8_skip_modules=list(cfg.nf4_skip_modules) if cfg.nf4_skip_modules else None,
    )


def label_names(labels) -> dict:
    """`from_pretrained`'s arguments for a classifier of the class names `labels`: their number, and both lookups."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}


# The recipes: one per variant, the calls a learner would write (the notebook shows them). `build_model` runs one and
# then `fit_to_machine`; variants.py declares which recipe each variant uses.


def build_head_only(cfg: Config, model_path: str, labels, pad_token_id: int):
    """Head-only: the pretrained model frozen; only the new classification head (`score`) trains."""
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, **label_names(labels), pad_token_id=pad_token_id, dtype=torch.float32
    )
    model.requires_grad_(False)
    model.score.requires_grad_(True)
    return model


def build_lora(cfg: Config, model_path: str, labels, pad_token_id: int):
    """LoRA: low-rank updates beside every linear layer of the fp32 model; they and the head train."""
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, **label_names(labels), pad_token_id=pad_token_id, dtype=torch.float32
    )
    return get_peft_model(model, make_lora_config(cfg, model.config.model_type))


def build_nf4_lora(cfg: Config, model_path: str, labels, pad_token_id: int):
    """QLoRA: the model loaded in 4-bit NF4, gradient checkpointing on, LoRA on top."""
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, **label_names(labels), pad_token_id=pad_token_id, dtype=torch.float32,
        quantization_config=make_nf4_config(cfg),
    )  # fmt: skip
    model = prepare_model_for_kbit_training(  # freezes the base, casts its 16-bit rest to fp32, checkpoints
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    store_embeddings_16bit(model)  # ours: in fp32 the frozen embedding tables would outweigh every 4-bit layer
    return get_peft_model(model, make_lora_config(cfg, model.config.model_type))


def build_full_finetune(cfg: Config, model_path: str, labels, pad_token_id: int):
    """Full fine-tuning: every weight trains."""
    return AutoModelForSequenceClassification.from_pretrained(
        model_path, **label_names(labels), pad_token_id=pad_token_id, dtype=torch.float32
    )


def build_model(cfg: Config, variant, model_path: str, tokenizer, labels):
    """The model `variant` (a `variants.Variant`) trains: its recipe, seeded (every variant's head, and LoRA's A, start
    the same), then fitted to this machine."""
    set_seed(cfg.seed)
    with quiet_load_report():
        model = variant.build(cfg, model_path, labels, tokenizer.pad_token_id)
    return fit_to_machine(model)


def load_classifier(model_path: str, pad_token_id: int, labels, bnb_config: BitsAndBytesConfig | None = None,
                    embedding_dtype: str | None = None, cpu_inference_kernel: bool = False):  # fmt: skip
    """A classifier on `model_path` for prediction or measurement, in fp32 or quantized by `bnb_config`, fitted to this
    machine. `embedding_dtype` ("bfloat16"): the embedding tables stored as NF4 LoRA stores them.
    `cpu_inference_kernel` lets bitsandbytes use its packed bf16 CPU kernel: for a model that only predicts."""
    with quiet_load_report():
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, **label_names(labels), pad_token_id=pad_token_id, dtype=torch.float32, quantization_config=bnb_config
        )
    if embedding_dtype is not None:
        store_embeddings_16bit(model, getattr(torch, embedding_dtype))
    return fit_to_machine(model, cpu_inference_kernel)


def fit_to_machine(model, cpu_inference_kernel: bool = False):
    """What this project does to every model it loads, beyond the recipe: nothing a learner needs, each for a machine
    or for the records. GPT-2's GELU computed fused (the same function, a third of the memory); a quantized model's
    tensors that still view the checkpoint file copied (else RSS keeps the whole file); bitsandbytes' packed CPU kernel,
    which cannot train, allowed only for prediction; the adapter's config listing only the head this model has."""
    fuse_activations(model)
    if layers_4bit(model):
        copy_checkpoint_views(model)
        allow_cpu_inference_kernel(model, cpu_inference_kernel)
    if hasattr(model, "peft_config"):
        keep_existing_modules_to_save(model)
    return model


def fuse_activations(model, swaps: dict[str, str] = FUSED_ACTIVATIONS) -> int:
    """Swap each activation named in `swaps` for the one it maps to (transformers' ACT2FN names); returns how many."""
    from transformers.activations import ACT2FN

    wanted = {type(ACT2FN[old]): new for old, new in swaps.items()}  # the type to replace -> the name to load
    swapped = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) in wanted:
                setattr(module, name, ACT2FN[wanted[type(child)]])
                swapped += 1
    return swapped


def adapted_module_names(model) -> list[str]:
    """The short names of the layers LoRA adapted (peft's `targeted_module_names`), in model order, each once."""
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in model.targeted_module_names))


def reports_only_the_head(message: str) -> bool:
    """Whether a transformers load report lists nothing but the new classification head's weights."""
    keys = [line.split("|")[0].strip() for line in message.splitlines() if "|" in line]
    keys = [k for k in keys[1:] if k and not k.startswith("-")]  # after the header row and its rule
    return all(k.startswith(CLASSIFIER_HEADS) for k in keys)


@contextlib.contextmanager
def quiet_load_report():
    """Mute transformers' load report while loading a classifier when it lists only the new head.

    A language model's checkpoint has no classification head, so the report always says "score.weight
    MISSING", which is how it should be; a report that lists anything else (a cut-short download) still shows.
    A filter, not a log level: transformers runs extra checks (and warns) when that logger's level is raised.
    """
    log = logging.getLogger("transformers.modeling_utils")

    def mute(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "LOAD REPORT" not in message or not reports_only_the_head(message)

    log.addFilter(mute)
    try:
        yield
    finally:
        log.removeFilter(mute)


def copy_checkpoint_views(model) -> int:
    """Copy the CPU tensors of a quantized model that still view its checkpoint file; returns how many.

    safetensors loads zero-copy: a tensor kept as loaded is a view into the memory-mapped file. In a
    quantized model that is only the norms and biases (a few MB), but one view keeps the whole mapping
    alive, and quantizing read every page of it. Measured: gpt2-large's NF4 model (500 MB) kept 3.3 GB
    of its fp32 checkpoint in RSS through 291 such views (4.2 -> 1.1 GB RSS once they were copied).
    Those pages are clean and the kernel could drop them, but RSS counts them and a "will it fit"
    check reads RSS. The 4-bit weights are copies already; on a GPU nothing views the file.
    """
    import bitsandbytes as bnb

    copied = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and not isinstance(tensor, bnb.nn.Params4bit):
            tensor.data = tensor.data.clone()
            copied += 1
    return copied


def allow_cpu_inference_kernel(model, allowed: bool) -> int:
    """Let (or never let) bitsandbytes switch this model's 4-bit layers to its packed bf16 CPU kernel; returns how many layers.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) converts a `Linear4bit`'s weight, in place and for
    good, to a packed layout the first time the layer runs in eval mode on an input that needs no
    gradient (an evaluation pass), and from then on computes it with a kernel that has no backward:
    training after any evaluation then crashes (layers with a bias) or silently stops the gradient at
    every quantized layer. The switch is the layer's `support_avx512bf16_for_cpu`, set from the CPU at
    construction; models that train are loaded with it off, so no evaluation can pack them.
    Allowed, the packed kernel predicts 1.28x faster there (in bf16: logits move by up to 0.025). It is never allowed
    where `hardware.cpu_has_native_bf16()` says no ($ONEDNN_MAX_CPU_ISA=AVX2 takes the AVX2-only path everywhere).
    """
    from bitsandbytes.functional import has_avx512bf16

    layers = layers_4bit(model)
    for layer in layers:
        layer.support_avx512bf16_for_cpu = allowed and has_avx512bf16() and cpu_has_native_bf16()
    return len(layers)


def layers_4bit(model) -> list:
    """The bitsandbytes 4-bit layers of `model` (peft's wrappers, which share the name, excluded)."""
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def packed_4bit_layers(model) -> int:
    """How many 4-bit layers bitsandbytes has switched to its packed CPU inference layout."""
    return sum(bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in layers_4bit(model))


def check_trainable(model) -> None:
    """Refuse to train a model whose 4-bit layers were packed for inference (no backward: see allow_cpu_inference_kernel)."""
    packed = packed_4bit_layers(model)
    if packed:
        raise RuntimeError(
            f"{packed} 4-bit layers of this model were packed for CPU inference and cannot be trained "
            "(bitsandbytes' packed kernel has no backward). Build the model for training with models.build_model, or "
            "load it with load_classifier(..., cpu_inference_kernel=False)."
        )


def nf4_kernel(model) -> str | None:
    """Which 4-bit matmul ran in `model` (None without 4-bit layers): for records."""
    if not layers_4bit(model):
        return None
    if packed_4bit_layers(model):
        return "bitsandbytes packed bf16 CPU kernel (AVX512-BF16)"
    return "dequantize to the compute dtype, then matmul"


def store_embeddings_16bit(model, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store every embedding table in `dtype`; their outputs go on in fp32. Returns the bytes saved.

    NF4 quantizes only the linear layers. The rest stays in fp32, and in GPT-2 most of that rest is
    the token embedding (38.6M of 124M parameters: 154 MB, more than all the 4-bit weights).
    An embedding is a frozen lookup table: storing it in bf16 (fp32's exponent range, so nothing can
    overflow; 8 significant bits, twice what an NF4 weight keeps) halves it, and the looked-up rows
    are cast back to fp32, so all that follows computes as before. Norms and the head stay in fp32.
    """
    saved = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.weight.dtype != dtype:
            saved += module.weight.numel() * (module.weight.element_size() - torch.finfo(dtype).bits // 8)
            module.weight.data = module.weight.data.to(dtype)
            module.register_forward_hook(lambda _module, _args, out: out.float())
    return saved


def keep_existing_modules_to_save(model) -> list[str]:
    """Drop from the adapter config the head names this model does not have (peft lists `classifier` and `score`)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for config in model.peft_config.values():
        config.modules_to_save = [m for m in config.modules_to_save or [] if m in names]
    return config.modules_to_save


def count_parameters(model) -> dict[str, int]:
    """Trainable and total parameters (a 4-bit weight counts as the parameters it stands for)."""
    if hasattr(model, "get_nb_trainable_parameters"):  # peft's
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable, total = model.num_parameters(only_trainable=True), model.num_parameters()
    return {"trainable": int(trainable), "total": int(total)}


def first_module_named(model, suffix: str):
    """The first module whose qualified name ends with `suffix` (e.g. block 0's attention projection)."""
    for name, module in model.named_modules():
        if name.endswith("." + suffix):
            return module
    raise KeyError(f"No module named *.{suffix} in {type(model).__name__}.")
