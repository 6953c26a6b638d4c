"""Save trained adapters and models (atomically, with a model card), load them back safely, classify texts."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import safe_open
from tqdm import tqdm  # text bars: they read the same in Jupyter, nbconvert and on GitHub (no widgets)
from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig, DataCollatorWithPadding

from peft_sentiment.catalog import WEIGHTS_SOURCE, architecture_of, hub_base_model, load_tokenizer, resolve_model
from peft_sentiment.config import IMDB
from peft_sentiment.data import encode_reviews
from peft_sentiment.hardware import autocast, resolve_precision
from peft_sentiment.models import NF4_EMBEDDING_DTYPE, fit_to_machine, load_classifier
from peft_sentiment.recording import atomic_path

META_FILE = "peft_sentiment.json"  # what the model was trained on, so that it is loaded and fed as in training
# an adapter folder (peft) or a whole model's (transformers), each with the metadata
KINDS = {"adapter": ("adapter_config.json", "adapter_model.safetensors"), "model": ("config.json", "model.safetensors")}


def save_trained(model, tokenizer, out_dir: str, meta: dict, record: dict | None = None) -> Path:
    """Save `model` (its adapter and head, or, without an adapter, the whole model), tokenizer, metadata and card.

    Written to a temporary folder and swapped in by rename: a crash mid-save leaves the previous one intact.
    """
    with atomic_path(out_dir) as tmp:
        if isinstance(model, PeftModel):
            for adapter_config in model.peft_config.values():  # peft would write the local path it loaded from
                adapter_config.base_model_name_or_path = meta["hub_base_model"]
            base = model.get_base_model()  # peft's card names the base (metadata and tags) by these, a local path here
            base.name_or_path = base.config.name_or_path = meta["hub_base_model"]
            # The vocabulary is never resized (the pad token is EOS), so no embedding rows to save; peft's "auto" would
            # look the Hub base's config up to decide, and warn on every offline save.
            model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)  # writes peft's card too
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        card = tmp / "README.md"
        card.write_text((card.read_text().rstrip() + "\n" if card.is_file() else "") + model_card_section(meta, record))
    return Path(out_dir)


def trained_meta(cfg, variant, model_path: str, labels, bnb_config: BitsAndBytesConfig | None) -> dict:
    """What `load_adapter` needs to rebuild the model exactly as it was trained (no machine paths)."""
    return {
        "variant": variant.name,
        "base_model": cfg.model_name,
        "hub_base_model": hub_base_model(cfg.model_name, model_path),
        "base_architecture": architecture_of(model_path),
        "dataset": cfg.dataset if not Path(cfg.dataset).is_absolute() else Path(cfg.dataset).name,
        "num_labels": len(labels),
        "labels": list(labels),
        "max_length": cfg.max_length,
        "prompt_suffix": cfg.prompt_suffix,
        "truncation": cfg.truncation,
        "truncation_head_share": cfg.truncation_head_share,
        "profile": cfg.profile,
        "precision": resolve_precision(cfg.precision),
        "quantization": None if bnb_config is None else bnb_config.to_dict(),
        # How the NF4 base stored its embeddings; adapters saved before this field existed used fp32.
        "embedding_dtype": None if bnb_config is None else NF4_EMBEDDING_DTYPE,
    }


def model_card_section(meta: dict, record: dict | None) -> str:
    """This project's part of the model card (after peft's, for an adapter): data, settings, metrics, how to load."""
    base = meta["hub_base_model"] if not Path(meta["hub_base_model"]).is_absolute() else meta["base_model"]
    source = WEIGHTS_SOURCE.get(meta["base_model"])
    quantized = "NF4 (bitsandbytes 4-bit, double quantization)" if meta["quantization"] else "none (fp32)"
    lines = [
        "",
        f"## peft_sentiment: `{meta['variant']}` on `{base}`, {meta.get('dataset', IMDB)}",
        "",
        *([f"- Base weights: {source}"] if source else []),
        f"- Profile `{meta['profile']}`, max length {meta['max_length']} tokens, classes {meta['labels']}",
        f"- Quantization of the base: {quantized}; trained in {meta.get('precision', 'fp32')}",
    ]
    if record:
        cfg, m = record["config"], record["metrics"]
        low, high = m["accuracy_ci95"]
        lines += [
            f"- Data: train {cfg['train_size'] or 'all'}, validation {cfg['val_size']}, test {m['test_reviews']} (seed {cfg['seed']})",
            f"- {record['params']['trainable']:,} trainable of {record['params']['total']:,} parameters; "
            f"test accuracy {m['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}), macro F1 {m['f1_macro']:.4f}",
            f"- Trained in {record['train_seconds']:.0f} s on {record['device']['name']} ({record['created']})"
            + (f"; reproduce: `{record['command']}`" if record.get("command") else ""),
        ]
    lines += [
        "",
        "Load it with `peft_sentiment.inference.load_adapter(folder)` (it encodes texts as training did).",
        "",
    ]
    return "\n".join(lines)


def check_adapter_dir(adapter_dir: str) -> dict:
    """The saved adapter's or model's metadata, or a clear error when the folder is missing files or unsafe."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Folder {folder} does not exist. Train a variant that saves (LoRA, ...) first, or check the path."
        )
    for _, weights in KINDS.values():
        if (folder / weights.replace(".safetensors", ".bin")).exists() and not (folder / weights).exists():
            raise ValueError(
                f"{folder} holds only {weights.replace('.safetensors', '.bin')}, a pickle that can run arbitrary code when "
                "loaded. Re-save it as safetensors (model.save_pretrained(..., safe_serialization=True))."
            )
    kind = "adapter" if (folder / "adapter_config.json").is_file() else "model"
    missing = [name for name in (*KINDS[kind], META_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete saved {kind}: it lacks {missing}. Save it again (save_trained).")
    parsed = {}
    for name in (KINDS[kind][0], META_FILE):
        try:
            parsed[name] = json.loads((folder / name).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{folder / name} is corrupt ({err}). Copy or save the adapter again.") from err
    weights = folder / KINDS[kind][1]
    try:
        with safe_open(str(weights), framework="pt") as stored:  # reads the header and checks it against the file's size
            stored.keys()
    except Exception as err:  # safetensors raises its own SafetensorError (not a ValueError) for every kind of damage
        raise ValueError(
            f"{weights} is not a readable safetensors file ({err}): it is truncated or corrupt. Copy or save the adapter again."
        ) from err
    return parsed[META_FILE] | {"kind": kind}


def load_adapter(adapter_dir: str, model_path: str | None = None, quantized: bool = True, cpu_inference_kernel: bool = False):
    """The base model with the adapter at `adapter_dir` applied (quantized again if it was), and its tokenizer.

    A whole model's folder (full fine-tuning) is loaded as it is, by `AutoModelForSequenceClassification`.

    `quantized=False` loads an NF4 adapter's base in fp32 (for merging). By default the model computes
    as it did in training, so it reproduces its record; `cpu_inference_kernel=True` lets an NF4 base use
    bitsandbytes' packed bf16 kernel on CPUs with AVX512-BF16 (predicting 1.28x faster there, logits
    within ~0.025; `models.nf4_kernel` says which ran). The model must not be trained then.
    """
    meta = check_adapter_dir(adapter_dir)
    if meta["kind"] == "model":
        model = AutoModelForSequenceClassification.from_pretrained(adapter_dir, dtype=torch.float32, use_safetensors=True)
        return fit_to_machine(model).eval(), load_tokenizer(adapter_dir)  # computes as in training (GPT-2's fused GELU)
    if model_path is None:  # a model built here (tiny-gpt2: from its reviews) by its folder, else the name resolved here
        local = meta.get("hub_base_model")
        model_path = local if local and Path(local).is_dir() else resolve_model(meta["base_model"])
    check_adapter_base(meta, model_path, adapter_dir)
    tokenizer = load_tokenizer(adapter_dir)
    bnb_config = BitsAndBytesConfig.from_dict(meta["quantization"]) if meta["quantization"] and quantized else None
    embedding_dtype = meta.get("embedding_dtype") if bnb_config else None
    base = load_classifier(model_path, tokenizer.pad_token_id, meta["labels"], bnb_config, embedding_dtype, cpu_inference_kernel)
    model = PeftModel.from_pretrained(base, adapter_dir)  # reads adapter_model.safetensors only
    model.eval()
    return model, tokenizer


def check_adapter_base(meta: dict, model_path: str, adapter_dir) -> None:
    """Refuse a base model the adapter was not trained on."""
    expected, found = meta.get("base_architecture"), architecture_of(model_path)
    if expected and expected != found:
        raise ValueError(
            f"{adapter_dir} was trained on {meta['base_model']} ({expected}), but {model_path} is {found}. "
            f"Load it on its own base model: load_adapter({str(adapter_dir)!r}) without model_path, or model_path={meta['base_model']!r}."
        )


def merge_adapter(adapter_dir: str, out_dir: str, model_path: str | None = None) -> Path:
    """Fold the adapter into its base (`merge_and_unload`) and save a plain model any tool can load.

    The base is loaded in fp32 even for an NF4 adapter: a merged 4-bit model would round the LoRA
    update into 4-bit weights. For an fp32 adapter the merged model computes what the adapter model
    computes; for an NF4 adapter it is the adapter on the unquantized weights (close, not equal).
    The folder holds safetensors weights, the tokenizer and peft_sentiment.json (how to encode reviews).
    """
    meta = check_adapter_dir(adapter_dir)
    if meta["kind"] == "model":
        raise ValueError(f"{adapter_dir} is a whole model already (nothing to merge): load it with transformers directly.")
    model, tokenizer = load_adapter(adapter_dir, model_path, quantized=False)
    merged = model.merge_and_unload()
    with atomic_path(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = meta | {"merged_from": str(adapter_dir), "quantization": None, "kind": "model"}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    return Path(out_dir)


PREDICTION_PRECISIONS = ("auto", "recorded", "fp32", "bf16", "fp16")


def encoding(meta: dict, precision: str = "auto") -> dict:
    """How to encode and compute an adapter's reviews, as `predict_reviews` takes it: encoded as in training, computed
    in `precision`: "auto" (what this machine computes natively), "recorded" (the adapter's training precision,
    which reproduces its record), or fp32, bf16, fp16.

    "auto" by default: an adapter trained in bf16 on a CPU with AVX512-BF16 predicts 6-12x slower under emulated bf16
    on a CPU without it, for probabilities that move within bf16's rounding (docs/benchmarks.md, "Predicting in
    another precision"). Adapters from before truncation settings were trained with `head`, and those from before
    the precision setting in fp32.
    """
    if precision not in PREDICTION_PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PREDICTION_PRECISIONS)}.")
    recorded = meta.get("precision", "fp32")
    return {
        "max_length": meta["max_length"],
        "suffix": meta["prompt_suffix"],
        "truncation": meta.get("truncation", "head"),
        "head_share": meta.get("truncation_head_share", 0.25),
        "precision": recorded if precision == "recorded" else resolve_precision(precision),
    }


def describe_prediction_precision(meta: dict, precision: str = "auto") -> str:
    """One line: the precision predictions compute in, and how it relates to the adapter's training precision."""
    chosen, recorded = encoding(meta, precision)["precision"], meta.get("precision", "fp32")
    if chosen == recorded:
        return f"predicting in {chosen}, the precision {meta['variant']} was trained and recorded in"
    why = "this machine's native precision" if precision == "auto" else "as asked"
    return (
        f"predicting in {chosen} ({why}); {meta['variant']} was trained in {recorded}: probabilities differ from its "
        f"record within {recorded}'s rounding (--precision recorded reproduces the record)"
    )


@torch.inference_mode()  # no autograd graph: less memory, faster
def predict_reviews(
    model,
    tokenizer,
    texts: list[str],
    max_length: int,
    suffix: str = "",
    batch_size: int = 32,
    progress: bool = False,
    truncation: str = "head",
    head_share: float = 0.25,
    precision: str = "fp32",
) -> list[dict]:
    """Predicted class, its probability and every class's for each text, in input order, encoded and computed as in
    training (`encoding`): `precision` "bf16" or "fp16" runs under the Trainer's autocast."""
    if isinstance(texts, str):
        texts = [texts]
    device = next(model.parameters()).device
    names = model.config.id2label
    collator = DataCollatorWithPadding(tokenizer)
    results = []
    for start in tqdm(range(0, len(texts), batch_size), desc="Classifying", unit="batch", disable=not progress):
        ids = encode_reviews(texts[start : start + batch_size], tokenizer, max_length, suffix, truncation, head_share)[
            "input_ids"
        ]
        batch = collator([{"input_ids": row, "attention_mask": [1] * len(row)} for row in ids])
        with autocast(precision, device.type):
            logits = model(**batch.to(device)).logits
        for row in torch.softmax(logits.float(), dim=-1).tolist():
            label = max(range(len(row)), key=row.__getitem__)  # the first of equal maxima, as argmax
            results.append({"label": names[label], "probability": row[label], "probabilities": row})
    return results
