"""Build a variant's model (`build_model`: the Hugging Face calls in peft's documented order), the LoRA and NF4
settings it reads from the config, and the guards around bitsandbytes' 4-bit layers."""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BitsAndBytesConfig,
    set_seed,
)

from peft_sentiment.config import Config
from peft_sentiment.hardware import cpu_has_native_bf16, on_gpu, resolve_compute_dtype

# GPT-2's "gelu_new" is the tanh GELU written as eight elementwise ops, each a pass over the MLP's
# widest activations that autograd keeps for backward; torch's fused kernel computes the same function
# (within 5e-7 in fp32; tests/test_models.py) in one pass and keeps only its input.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}
NF4_EMBEDDING_DTYPE = "bfloat16"  # what a quantized model stores its embedding tables in (store_embeddings_16bit)


def make_lora_config(cfg: Config, model_path: str) -> LoraConfig:
    """The LoRA settings of `cfg` for the architecture of `model_path`."""
    model_type = AutoConfig.from_pretrained(model_path).model_type
    return lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, model_type)


def lora_config(r: int, alpha: int, dropout: float, targets, model_type: str) -> LoraConfig:
    """LoRA of rank `r` on `targets`, or (None) on every linear layer below the head (attention and MLP projections)."""
    return LoraConfig(
        task_type="SEQ_CLS",  # keeps the classification head (`score`) trainable and saves it with the adapter
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        # peft's "all-linear": every Linear (GPT-2: Conv1D) except the output layer; for GPT-2 and Llama exactly
        # the projections a per-architecture list would name (tests/test_models.py)
        target_modules=list(targets) if targets else "all-linear",
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights as (in, out)
    )


def adapted_module_names(model) -> list[str]:
    """The short names of the layers LoRA adapted (peft's `targeted_module_names`), in model order, each once."""
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in model.targeted_module_names))


def make_nf4_config(cfg: Config) -> BitsAndBytesConfig:
    """4-bit NF4 with the profile's double quantization, compute dtype and layers kept unquantized."""
    return BitsAndBytesConfig(
        load_in_4bit=True,  # every linear layer below the head quantized while loading
        bnb_4bit_quant_type="nf4",  # 16 levels placed at normal quantiles: weights are roughly normal
        bnb_4bit_use_double_quant=cfg.nf4_double_quant,  # quantize the per-block scales too (~0.4 bit per weight saved)
        # matmuls de-quantize to this dtype: "auto" follows the run's precision (bf16, fp16 on a T4, fp32)
        bnb_4bit_compute_dtype=getattr(torch, resolve_compute_dtype(cfg.nf4_compute_dtype, cfg.precision)),
        # None: transformers' default (the head); a list replaces it, so it names the head too
        llm_int8_skip_modules=list(cfg.nf4_skip_modules) if cfg.nf4_skip_modules else None,
    )


def load_classifier(
    model_path: str,
    pad_token_id: int,
    labels,
    bnb_config: BitsAndBytesConfig | None = None,
    embedding_dtype: str | None = None,
    cpu_inference_kernel: bool = False,
):
    """A sequence classifier for the class names `labels` on `model_path`, in fp32 or quantized by `bnb_config`.

    `embedding_dtype` ("bfloat16") stores the embedding tables in 16 bits (see `store_embeddings_16bit`).
    `cpu_inference_kernel` lets bitsandbytes use its packed bf16 CPU kernel (see `allow_cpu_inference_kernel`):
    for a model that only predicts, never for one that trains.
    """
    kwargs = {}
    activation = getattr(AutoConfig.from_pretrained(model_path), "activation_function", None)
    if activation in FUSED_ACTIVATIONS:
        kwargs["activation_function"] = FUSED_ACTIVATIONS[activation]  # same function, fused (see FUSED_ACTIVATIONS)
    if bnb_config is not None and on_gpu():  # each process quantizes onto its own GPU (DDP-safe, unlike "auto")
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    with quiet_load_report():
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            dtype=torch.float32,
            quantization_config=bnb_config,
            use_safetensors=True,  # never unpickle downloaded weights
            output_loading_info=True,
            # a checkpoint with a head for another number of classes (tiny-gpt2's has 2): that head starts afresh
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    warn_unexpected_loading(loading, model_path)
    if bnb_config is not None:
        copy_checkpoint_views(model)
        allow_cpu_inference_kernel(model, cpu_inference_kernel)
    # GPT-2 has no pad token; the classifier pools the last non-pad token, so it must know the pad id.
    model.config.pad_token_id = pad_token_id
    if embedding_dtype is not None:
        store_embeddings_16bit(model, getattr(torch, embedding_dtype))
    return model


CLASSIFIER_HEADS = ("score.", "classifier.")  # what AutoModelForSequenceClassification adds to a language model


@contextlib.contextmanager
def quiet_load_report():
    """Mute transformers' load report while loading a classifier: it lists the new head on every load.

    A language model's checkpoint has no classification head, so the report always says "score.weight
    MISSING", which is how it should be; `warn_unexpected_loading` reports anything else. A filter,
    not a log level: transformers runs extra checks (and warns) when that logger's level is raised.
    """
    log = logging.getLogger("transformers.modeling_utils")

    def mute(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()

    log.addFilter(mute)
    try:
        yield
    finally:
        log.removeFilter(mute)


def warn_unexpected_loading(loading: dict, model_path: str) -> None:
    """Warn when loading left out, ignored or resized any weight other than the new classification head."""
    problems = {
        "missing": [k for k in loading.get("missing_keys", ()) if not k.startswith(CLASSIFIER_HEADS)],
        "unexpected": list(loading.get("unexpected_keys", ())),
        "mismatched": [str(k) for k in loading.get("mismatched_keys", ()) if not str(k[0]).startswith(CLASSIFIER_HEADS)],
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        listed = "; ".join(
            f"{kind}: {', '.join(sorted(keys)[:8])}{' ...' if len(keys) > 8 else ''}" for kind, keys in problems.items()
        )
        warnings.warn(
            f"Loading {model_path} as a classifier did not match its checkpoint beyond the new head ({listed}). "
            "Is it the model you meant, and a complete download?",
            stacklevel=3,
        )


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


def build_model(cfg: Config, variant, model_path: str, tokenizer, labels):
    """The model `variant` (a `variants.Variant`) trains: loaded, quantized and wrapped as its declaration says.

    The calls and their order are peft's documented QLoRA recipe; a variant without quantization or
    LoRA skips those steps. Seeded first, so that every variant's head (and LoRA) starts the same.
    """
    set_seed(cfg.seed)
    bnb_config = variant.quantization(cfg) if variant.quantization else None  # BitsAndBytesConfig (NF4) or None
    model = load_classifier(model_path, tokenizer.pad_token_id, labels, bnb_config)
    if bnb_config is not None:
        # casts the 16-bit rest to fp32 for stable training and, here, turns on gradient checkpointing
        # (non-reentrant: it needs no input-grad hook and works with frozen inputs)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=variant.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        store_embeddings_16bit(model, getattr(torch, NF4_EMBEDDING_DTYPE))  # frozen lookups: 16 bits are enough
    elif variant.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if variant.peft_config:  # LoraConfig (task_type SEQ_CLS: the head trains in full and is saved with the adapter)
        model = get_peft_model(model, variant.peft_config(cfg, model_path))
        keep_existing_modules_to_save(model)
        return model
    model.requires_grad_(variant.trains == "all")
    model.score.requires_grad_(True)  # the new head always trains
    return model


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
