"""Records: written atomically with every key the tables read, read back in variant order; outputs checked before work."""

import copy
import json
import os
from pathlib import Path

import pytest

from peft_sentiment import recording

ROOT = Path(__file__).resolve().parents[1]


def test_records_round_trip_in_variant_order(records, tmp_path):
    for r in records:
        recording.write_record(r, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head_only.json", "lora.json", "nf4_lora.json"]
    back = recording.read_records(tmp_path)
    assert [r["variant"] for r in back] == ["head_only", "lora", "nf4_lora"]
    assert back[1] == json.loads(json.dumps(records[2]))
    # in the order the variants are declared (tables and plots), a record of an undeclared variant last
    recording.write_record({**records[0], "variant": "aaa_own"}, tmp_path)
    ordered = recording.read_records(tmp_path, order=["lora", "nf4_lora", "head_only"])
    assert [r["variant"] for r in ordered] == ["lora", "nf4_lora", "head_only", "aaa_own"]


def test_the_committed_records_read_back_complete():
    committed = recording.read_records(ROOT / "results" / "cpu")  # the committed records read as well (file-name order)
    assert [r["variant"] for r in committed] == ["full_finetune", "head_only", "lora", "nf4_lora"]
    assert all(r["labels"] == ["neg", "pos"] and 0.5 < r["metrics"]["f1_macro"] <= 1 for r in committed)


def test_incomplete_records_are_refused(records, tmp_path):
    broken = copy.deepcopy(records[0])
    del broken["metrics"]["accuracy_ci95"], broken["train_seconds"]
    with pytest.raises(ValueError, match=r"train_seconds.*metrics.accuracy_ci95"):
        recording.write_record(broken, tmp_path)


def test_unwritable_output_folder_is_refused_before_work(tmp_path, monkeypatch):
    recording.check_writable(tmp_path / "fine" / "deeper")  # missing folders are fine: they will be created
    assert not (tmp_path / "fine").exists(), "checking creates nothing"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        recording.check_writable(tmp_path / "a_file" / "records")
    monkeypatch.setattr(recording.os, "access", lambda *args: False)  # permission bits do not bind root: simulate
    with pytest.raises(PermissionError, match="not writable"):
        recording.check_writable(tmp_path / "records")


def test_a_crash_while_writing_a_record_keeps_the_previous_one(records, tmp_path, monkeypatch):
    path = recording.write_record(records[0], tmp_path)
    before = path.read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(recording.json, "dumps", crash)
    with pytest.raises(OSError, match="disk full"):
        recording.write_record({**records[0], "train_seconds": 99.0}, tmp_path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file left behind"


def test_a_damaged_record_is_named_in_the_error(records, tmp_path):
    path = recording.write_record(records[0], tmp_path)
    path.write_text(path.read_text()[:50])
    with pytest.raises(ValueError, match=f"{path.name} is not valid JSON"):
        recording.read_records(tmp_path)


def test_atomic_path_replaces_a_file_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "out" / "result.json"
    with recording.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target  # beside it (one filesystem: the rename is atomic)
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError, match="crash"), recording.atomic_path(target) as tmp:
        tmp.write_text("half of the sec")
        raise RuntimeError("crash")
    assert target.read_text() == "first" and os.listdir(target.parent) == ["result.json"]


def test_atomic_path_replaces_a_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "saved_model"
    with recording.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("v1")
        (tmp / "config").write_text("v1")
    assert sorted(os.listdir(target)) == ["config", "weights"]
    with pytest.raises(KeyboardInterrupt), recording.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("v2")  # interrupted before its config was written
        raise KeyboardInterrupt
    assert (target / "weights").read_text() == "v1" and (target / "config").read_text() == "v1"
    with recording.atomic_path(target) as tmp:  # a successful save replaces the folder, files it no longer has included
        tmp.mkdir()
        (tmp / "weights").write_text("v3")
    assert os.listdir(target) == ["weights"] and (target / "weights").read_text() == "v3"
    assert os.listdir(tmp_path) == ["saved_model"], "no temporary or old folder left behind"
