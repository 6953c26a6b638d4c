"""Load IMDB (Hub or local parquet), take balanced seeded subsets, tokenize with length statistics."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset

from peft_sentiment.config import DATA_DIR_ENV, TRUNCATIONS, Config

log = logging.getLogger(__name__)

HUB_DATASET = "stanfordnlp/imdb"
LABEL_NAMES = ("neg", "pos")
SPLIT_FILES = {"train": "train.parquet", "test": "test.parquet"}


def load_imdb(data_dir: str | None = None) -> DatasetDict:
    """IMDB's train and test splits from `data_dir` (parquet) or, when None, from the Hub."""
    if data_dir is not None:
        files = check_imdb_dir(data_dir)
        raw = load_dataset("parquet", data_files=files)
    else:
        try:
            raw = load_dataset(HUB_DATASET)
        except Exception as err:  # offline, DNS, proxy: all look different, all mean "no Hub"
            raise RuntimeError(
                f"IMDB could not be loaded: the Hugging Face Hub is unreachable ({type(err).__name__}) and "
                f"{DATA_DIR_ENV} is not set. Either connect to the Hub, or set {DATA_DIR_ENV} to a folder "
                "holding train.parquet and test.parquet."
            ) from err
    return DatasetDict({split: clean_reviews(raw[split], split) for split in SPLIT_FILES})


def check_imdb_dir(data_dir: str) -> dict[str, str]:
    """The parquet files of `data_dir`, or a FileNotFoundError that says what is missing."""
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{DATA_DIR_ENV}={data_dir!r} is not a folder. Point it at the folder that holds "
            "train.parquet and test.parquet, or unset it to load IMDB from the Hub."
        )
    files = {split: folder / name for split, name in SPLIT_FILES.items()}
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {' and '.join(missing)}. It must hold train.parquet and test.parquet with "
            "columns `text` (string) and `label` (0 = neg, 1 = pos)."
        )
    return {split: str(path) for split, path in files.items()}


def clean_reviews(ds: Dataset, split: str) -> Dataset:
    """Check the schema and labels; drop empty or missing reviews (counted in the log)."""
    missing = {"text", "label"} - set(ds.column_names)
    if missing:
        raise ValueError(
            f"The {split} split has columns {ds.column_names} but lacks {sorted(missing)}: IMDB needs "
            "`text` (the review) and `label` (0 = neg, 1 = pos)."
        )
    labels = np.asarray(ds["label"])
    bad = sorted(set(labels.tolist()) - {0, 1})
    if bad:
        raise ValueError(f"The {split} split has labels {bad[:5]} outside {{0, 1}} (0 = neg, 1 = pos). Fix the data.")
    # An empty review carries no sentiment; dropping it (and saying so) beats failing a long run.
    keep = [i for i, text in enumerate(ds["text"]) if isinstance(text, str) and text.strip()]
    if len(keep) < len(ds):
        log.warning("Dropped %d empty or missing reviews from the %s split.", len(ds) - len(keep), split)
        ds = ds.select(keep)
    return ds.select_columns(["text", "label"])


def take_balanced_subset(ds: Dataset, size: int | None, seed: int) -> Dataset:
    """`size` reviews, half of each label, chosen and shuffled with `seed`; None = all, shuffled."""
    rng = np.random.default_rng(seed)
    if size is None:
        return ds.select(rng.permutation(len(ds)))
    labels = np.asarray(ds["label"])
    per_label = [size // 2, size - size // 2]
    chosen = []
    for label, want in enumerate(per_label):
        pool = np.flatnonzero(labels == label)
        if want > len(pool):
            raise ValueError(
                f"Asked for {size} reviews ({want} with label {label}), but the data has only {len(pool)} "
                f"with that label. Use a size of at most {2 * min(np.bincount(labels, minlength=2))}, or None for all."
            )
        chosen.append(rng.choice(pool, size=want, replace=False))
    return ds.select(rng.permutation(np.concatenate(chosen)))


def prepare_splits(cfg: Config, imdb: DatasetDict) -> DatasetDict:
    """Train, validation (carved from train) and test subsets as the config asks."""
    train_pool = take_balanced_subset(imdb["train"], None if cfg.train_size is None else cfg.train_size + cfg.val_size, cfg.seed)
    val = train_pool.select(range(cfg.val_size))
    train = train_pool.select(range(cfg.val_size, len(train_pool)))
    test = take_balanced_subset(imdb["test"], cfg.test_size, cfg.seed)
    return DatasetDict(train=train, validation=val, test=test)


def strip_markup(texts: list[str]) -> list[str]:
    """IMDB's `<br />` tags as newlines: markup, not sentiment, and several tokens each."""
    return [t.replace("<br />", "\n") for t in texts]


def truncate(ids: list[int], keep: int, truncation: str = "head", head_share: float = 0.25) -> list[int]:
    """The `keep` tokens of a review that `truncation` keeps: its start, its end, or both (`head_share` from the start).

    head+tail follows Sun et al. (2019), "How to Fine-Tune BERT for Text Classification": on IMDB,
    the first 128 and last 382 tokens of a long review beat either end alone (a head share of 0.25).
    """
    if len(ids) <= keep:
        return ids
    if truncation == "head":
        return ids[:keep]
    if truncation == "tail":
        return ids[len(ids) - keep :]
    if truncation != "head+tail":
        raise ValueError(f"truncation={truncation!r}: choose one of {', '.join(TRUNCATIONS)}.")
    head = round(keep * head_share)
    return ids[:head] + ids[len(ids) - (keep - head) :]


def encode_reviews(
    texts: list[str], tokenizer, max_length: int, suffix: str = "", truncation: str = "head", head_share: float = 0.25
) -> dict[str, list]:
    """Token ids of each review, cut (`truncate`) to leave room for `suffix`, then `suffix` appended; and the uncut length.

    `<br />` tags become newlines (`strip_markup`).
    A suffix such as "Overall, the review is" puts the model's own reading of the review into the last
    token, the one the classification head reads; it is never truncated away.
    """
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    keep = max_length - len(suffix_ids)
    if keep <= 0:
        raise ValueError(
            f"max_length={max_length} leaves no room for the review after the {len(suffix_ids)}-token prompt suffix."
        )
    # Silences "Token indices sequence length is longer than the specified maximum": we truncate below.
    previous, tokenizer.model_max_length = tokenizer.model_max_length, int(1e9)
    try:
        full = tokenizer(strip_markup(texts), truncation=False)["input_ids"]
    finally:
        tokenizer.model_max_length = previous
    ids = [truncate(row, keep, truncation, head_share) + suffix_ids for row in full]
    return {"input_ids": ids, "n_tokens": [len(row) + len(suffix_ids) for row in full]}


def tokenize_reviews(
    ds: Dataset | DatasetDict, tokenizer, max_length: int, suffix: str = "", truncation: str = "head", head_share: float = 0.25
):
    """Token ids truncated to `max_length` (as `truncation` says), plus `length` (kept) and `n_tokens` (before truncation).

    Tokenizing without truncation first costs little with a fast tokenizer and tells us how many
    reviews truncation cuts. No padding here: the collator pads each batch to its own longest row.
    The result is cached by `datasets` (keyed on data, tokenizer and arguments): a re-run skips it.
    """

    def encode(batch):
        enc = encode_reviews(batch["text"], tokenizer, max_length, suffix, truncation, head_share)
        ids = enc["input_ids"]
        return {**enc, "attention_mask": [[1] * len(row) for row in ids], "length": [len(row) for row in ids]}

    columns = ds["train"].column_names if isinstance(ds, DatasetDict) else ds.column_names
    return ds.map(encode, batched=True, batch_size=1000, remove_columns=[c for c in columns if c != "label"], desc="Tokenizing")


def truncation_stats(ds: Dataset, max_length: int) -> dict:
    """How long the reviews are in tokens and how many `max_length` truncates."""
    n_tokens = np.asarray(ds["n_tokens"])
    return {
        "reviews": int(len(n_tokens)),
        "median_tokens": float(np.median(n_tokens)),
        "p90_tokens": float(np.percentile(n_tokens, 90)),
        "truncated": int((n_tokens > max_length).sum()),
        "truncated_fraction": float((n_tokens > max_length).mean()),
    }


def label_balance(ds: Dataset) -> dict[str, int]:
    """Reviews per label name."""
    counts = np.bincount(np.asarray(ds["label"]), minlength=2)
    return {name: int(count) for name, count in zip(LABEL_NAMES, counts, strict=True)}
