"""Load a text-classification dataset (IMDB by default; the Hub or local files), check it, take stratified seeded
subsets, tokenize with length statistics.

Every split leaves here with two columns, `text` and `label`, the label a `ClassLabel` whose names come
from the data: so the rest of the package reads one schema whatever the dataset called its columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset

from peft_sentiment.config import DATA_DIR_ENV, IMDB, TRUNCATIONS, Config

SPLITS = ("train", "validation", "test")  # validation is optional: carved from train when the data has none


def load_splits(cfg: Config) -> DatasetDict:
    """The dataset `cfg` names, checked, as `text` and an integer `label` with its class names (bad data: ValueError)."""
    source = cfg.data_dir or cfg.dataset
    folder = Path(source).expanduser()
    local = folder.is_dir()  # else a Hub id
    try:
        # a folder: datasets finds the train/test/validation files by their names, in any one format it reads
        raw = load_dataset(str(folder) if local else source)
    except Exception as err:  # offline, a typo, a damaged file, mixed formats: each raises its own error
        cause = err.__cause__ or err  # datasets wraps the parser's own message, which says what is wrong
        if local:
            raise ValueError(f"Could not read the data files in {folder} ({type(cause).__name__}: {str(cause)[:300]}).") from err
        hint = f" or set {DATA_DIR_ENV} to a local copy" if cfg.dataset == IMDB else ""
        raise ValueError(
            f"Dataset {source!r} could not be loaded ({type(err).__name__}: {str(err)[:200]}). Give a Hub id that is "
            f"reachable, or a folder holding train and test files (CSV, JSON Lines or parquet){hint}."
        ) from err
    missing = [s for s in ("train", "test") if s not in raw]
    if missing and local:
        raise ValueError(
            f"{folder} must hold a train and a test file (train.csv, train.jsonl or train.parquet, and likewise test); "
            f"it has splits {list(raw)} but no {missing}; it holds {sorted(p.name for p in folder.iterdir())[:10]}."
        )
    if missing:
        raise ValueError(
            f"The Hub dataset {source!r} has splits {list(raw)} but no {missing}: the project trains on `train` and "
            "scores on `test`. Use a dataset with both, or save its splits as train and test files in a folder."
        )
    return check_splits(DatasetDict({s: raw[s] for s in SPLITS if s in raw}), cfg.text_column, cfg.label_column)


def check_splits(raw: DatasetDict, text_column: str, label_column: str) -> DatasetDict:
    """Each split as `text` and `label` (a ClassLabel named from the data); one clear ValueError for bad data."""
    for split, ds in raw.items():
        missing = [c for c in (text_column, label_column) if c not in ds.column_names]
        if missing:
            raise ValueError(
                f"The {split} split has no column {missing[0]!r}; its columns are {ds.column_names}. "
                "Set text_column and label_column to the ones that hold the text and its class."
            )
        texts = ds[text_column]
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(
                f"The {split} split has {len(bad)} empty or non-text entries in {text_column!r} (first at row {bad[0]}: "
                f"{texts[bad[0]]!r}). Remove or fill them."
            )
    feature = raw["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        names, index = list(feature.names), {i: i for i in range(len(feature.names))}
    else:  # not Dataset.class_encode_column: it sorts integers as text (10 before 2) and encodes each split on its own
        values = raw_label_values(raw["train"][label_column])
        names, index = [str(v) for v in values], {v: i for i, v in enumerate(values)}
    if len(set(raw["train"][label_column])) < 2:
        raise ValueError(f"The train split has one class only ({names}): a classifier needs at least two.")
    out = {}
    for split, ds in raw.items():
        unseen = sorted(set(ds[label_column]) - set(index), key=str)
        if unseen:
            raise ValueError(
                f"The {split} split has labels never seen in train: {unseen[:5]}. Train knows {names}; fix the data."
            )
        ds = ds.select_columns([text_column, label_column])
        if not isinstance(feature, ClassLabel):  # mapped once, here: everything downstream sees 0..classes-1
            ds = ds.map(lambda b: {"_label": [index[v] for v in b[label_column]]}, batched=True, remove_columns=[label_column])
            ds = ds.rename_column("_label", label_column)
        ds = ds.rename_columns({c: n for c, n in ((text_column, "text"), (label_column, "label")) if c != n})
        out[split] = ds.cast_column("label", ClassLabel(names=names))
    return DatasetDict(out)


def raw_label_values(values) -> list:
    """The distinct raw labels, sorted (numerically for integers): all integers or all strings, never a mix."""
    kinds = {type(v) for v in values}
    if not (kinds <= {int} or kinds <= {str}):
        raise ValueError(f"Labels must be all integers or all strings; found {sorted(k.__name__ for k in kinds)}.")
    return sorted(set(values))


def class_names(ds: Dataset | DatasetDict) -> list[str]:
    """The class names of a split (or of the train split of `ds`), index order."""
    split = ds["train"] if isinstance(ds, DatasetDict) else ds
    return list(split.features["label"].names)


def take_stratified_subset(ds: Dataset, size: int | None, seed: int) -> Dataset:
    """`size` examples, each class in its share of `ds`, chosen and shuffled with `seed`; None = all, shuffled.

    Shares that do not divide evenly are rounded by largest remainder (ties: the later class), so a
    balanced binary set gets size // 2 and size - size // 2.
    """
    return ds.select(stratified_indices(ds, size, seed))


def stratified_indices(ds: Dataset, size: int | None, seed: int) -> np.ndarray:
    """The row indices `take_stratified_subset` selects, in its order."""
    rng = np.random.default_rng(seed)
    if size is None:
        return rng.permutation(len(ds))
    labels = np.asarray(ds["label"])
    counts = np.bincount(labels, minlength=len(class_names(ds)))
    exact = size * counts / counts.sum()
    want = np.floor(exact).astype(int)
    by_remainder = sorted(range(len(counts)), key=lambda c: (exact[c] - want[c], c), reverse=True)
    want[by_remainder[: size - want.sum()]] += 1
    chosen = []
    for label, (need, have) in enumerate(zip(want, counts, strict=True)):
        if need > have:
            raise ValueError(
                f"Asked for {size} examples ({need} of class {class_names(ds)[label]!r}), but the split has {have} of that "
                f"class. Use a size of at most {len(ds)}, or None for all."
            )
        chosen.append(rng.choice(np.flatnonzero(labels == label), size=need, replace=False))
    return rng.permutation(np.concatenate(chosen))


def prepare_splits(cfg: Config, raw: DatasetDict) -> DatasetDict:
    """Train, validation (the data's own, else carved from train) and test subsets as the config asks.

    A size at least as large as its split takes all of it (and says so): a small dataset of your own runs
    on a profile sized for IMDB.
    """
    if "validation" in raw:
        val = take_stratified_subset(raw["validation"], within(cfg.val_size, raw["validation"], "val_size"), cfg.seed)
        train = take_stratified_subset(raw["train"], within(cfg.train_size, raw["train"], "train_size"), cfg.seed)
    else:
        size = None if cfg.train_size is None else cfg.train_size + cfg.val_size
        pool = take_stratified_subset(raw["train"], within(size, raw["train"], "train_size + val_size"), cfg.seed)
        if cfg.val_size >= len(pool):
            raise ValueError(f"val_size={cfg.val_size} leaves none of the {len(pool)} training examples to train on: lower it.")
        val, train = pool.select(range(cfg.val_size)), pool.select(range(cfg.val_size, len(pool)))
    return DatasetDict(train=train, validation=val, test=test_subset(cfg, raw["test"]))


def test_subset(cfg: Config, test: Dataset) -> Dataset:
    """The test subset: `test_size` examples drawn with `test_seed`, none of them (nor a duplicate of one) retired."""
    if cfg.retired_test_subset is not None:
        size = cfg.retired_test_subset[0]
        if size >= len(test):
            raise ValueError(
                f"retired_test_subset={cfg.retired_test_subset} retires {size:,} test examples, and the test split holds "
                f"{len(test):,}: none would be left. It names reviews of the dataset it was drawn from (IMDB's); for "
                "another dataset set retired_test_subset=None."
            )
        retired = set(test.select(stratified_indices(test, *cfg.retired_test_subset))["text"])
        test = test.select([i for i, text in enumerate(test["text"]) if text not in retired])
    seed = cfg.seed if cfg.test_seed is None else cfg.test_seed
    return take_stratified_subset(test, within(cfg.test_size, test, "test_size"), seed)


def describe_draw(config) -> str:
    """How the subsets were drawn, in words, from a Config or a record's config: the notebook, the README and the
    records all say it with this."""
    get = config.get if isinstance(config, dict) else lambda name: getattr(config, name)
    seed, test_seed, retired = get("seed"), get("test_seed"), get("retired_test_subset")
    words = f"stratified, seed {seed}"
    if test_seed not in (None, seed):
        words += f"; test reviews drawn with seed {test_seed}"
    if retired:  # test reviews that earlier choices saw, left out (config.retired_test_subset)
        words += f", leaving out the {retired[0]:,} of seed {retired[1]} that earlier runs tested on"
    return words


def within(size: int | None, split: Dataset, name: str) -> int | None:
    """`size`, or None (the whole split) when the split holds no more than that."""
    if size is not None and size >= len(split):
        print(f"{name}={size}, but the split holds {len(split)} examples: taking all of them.")
        return None
    return size


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
    """Examples per class name."""
    names = class_names(ds)
    counts = np.bincount(np.asarray(ds["label"]), minlength=len(names))
    return {name: int(count) for name, count in zip(names, counts, strict=True)}
