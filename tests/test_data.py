import pandas as pd
import pytest
from transformers import DataCollatorWithPadding

from peft_sentiment import data


def test_load_imdb_from_parquet(toy_imdb_dir):
    imdb = data.load_imdb(str(toy_imdb_dir))
    assert set(imdb) == {"train", "test"}
    assert (len(imdb["train"]), len(imdb["test"])) == (200, 80)
    assert imdb["train"].column_names == ["text", "label"]


def test_missing_folder_and_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        data.load_imdb(str(tmp_path / "nope"))
    pd.DataFrame({"text": ["a"], "label": [0]}).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(FileNotFoundError, match="lacks test.parquet"):
        data.load_imdb(str(tmp_path))


def write_split_pair(folder, frame):
    frame.to_parquet(folder / "train.parquet")
    frame.to_parquet(folder / "test.parquet")
    return str(folder)


def test_wrong_columns_and_labels_are_rejected(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match=r"lacks \['label'\]"):
        data.load_imdb(write_split_pair(tmp_path / "a", pd.DataFrame({"text": ["x"], "sentiment": [1]})))
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=r"labels \[2\] outside"):
        data.load_imdb(write_split_pair(tmp_path / "b", pd.DataFrame({"text": ["x", "y"], "label": [0, 2]})))


def test_empty_reviews_are_dropped_and_counted(tmp_path, caplog):
    frame = pd.DataFrame({"text": ["fine film", "", "   ", None, "bad film"], "label": [1, 0, 1, 0, 0]})
    imdb = data.load_imdb(write_split_pair(tmp_path, frame))
    assert imdb["train"]["text"] == ["fine film", "bad film"]
    assert "Dropped 3 empty or missing reviews" in caplog.text


def test_unreachable_hub_names_both_options(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(data, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="Hub is unreachable.*IMDB_DATA_DIR"):
        data.load_imdb(None)


def test_balanced_subset_is_seeded_and_balanced(toy_imdb_dir):
    train = data.load_imdb(str(toy_imdb_dir))["train"]
    a = data.take_balanced_subset(train, 51, seed=3)
    b = data.take_balanced_subset(train, 51, seed=3)
    assert a["text"] == b["text"]
    assert sorted(data.label_balance(a).values()) == [25, 26]
    assert data.take_balanced_subset(train, 51, seed=4)["text"] != a["text"]
    with pytest.raises(ValueError, match="at most 200"):
        data.take_balanced_subset(train, 1000, seed=0)


def test_splits_are_disjoint_and_sized(toy_cfg, toy_splits):
    assert [len(toy_splits[s]) for s in ("train", "validation", "test")] == [
        toy_cfg.train_size,
        toy_cfg.val_size,
        toy_cfg.test_size,
    ]
    assert not set(toy_splits["train"]["text"]) & set(toy_splits["validation"]["text"]) - {""}


def test_tokenize_truncates_counts_and_does_not_pad(toy_tokenized, tokenizer):
    train = toy_tokenized["train"]
    assert set(train.column_names) == {"label", "input_ids", "attention_mask", "length", "n_tokens"}
    for row in train.select(range(20)):
        assert row["length"] == len(row["input_ids"]) == min(row["n_tokens"], 32)
        assert tokenizer.pad_token_id not in row["input_ids"]
    stats = data.truncation_stats(train, 32)
    assert stats["truncated"] == sum(n > 32 for n in train["n_tokens"])


def test_collator_pads_each_batch_to_its_longest_row(toy_tokenized, tokenizer):
    rows = [toy_tokenized["train"][i] for i in range(4)]
    batch = DataCollatorWithPadding(tokenizer)([{k: r[k] for k in ("input_ids", "attention_mask", "label")} for r in rows])
    longest = max(r["length"] for r in rows)
    assert batch["input_ids"].shape == (4, longest)
    assert batch["attention_mask"].sum().item() == sum(r["length"] for r in rows)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


@pytest.mark.parametrize(
    "truncation, kept",
    [("head", [0, 1, 2, 3]), ("tail", [6, 7, 8, 9]), ("head+tail", [0, 7, 8, 9])],
)
def test_truncation_keeps_the_start_the_end_or_both(truncation, kept):
    ids = list(range(10))
    assert data.truncate(ids, 4, truncation, head_share=0.25) == kept
    assert data.truncate(ids, 12, truncation) == ids  # a review that fits is never cut
    assert data.truncate(ids, 4, "head+tail", head_share=0.5) == [0, 1, 8, 9]


def test_every_truncation_keeps_the_prompt_suffix_whole(tokenizer):
    long_review = " ".join(["good"] * 20 + ["awful"] * 20)
    suffix = " Overall"
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    for truncation in ("head", "tail", "head+tail"):
        enc = data.encode_reviews([long_review], tokenizer, 16, suffix, truncation)
        ids = enc["input_ids"][0]
        assert len(ids) == 16 and ids[-len(suffix_ids) :] == suffix_ids and enc["n_tokens"][0] > 16
    head = data.encode_reviews([long_review], tokenizer, 16, suffix, "head")["input_ids"][0]
    tail = data.encode_reviews([long_review], tokenizer, 16, suffix, "tail")["input_ids"][0]
    assert head != tail
    with pytest.raises(ValueError, match="choose one of head, tail, head\\+tail"):
        data.encode_reviews([long_review], tokenizer, 16, suffix, "middle")
