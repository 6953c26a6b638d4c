"""Records: written atomically with every key the tables read, read back in variant order; outputs checked before work."""

import copy
import json

import pytest

from peft_sentiment import recording


def test_records_round_trip_in_variant_order(records, tmp_path):
    for r in records:
        recording.write_record(r, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head_only.json", "lora.json", "nf4_lora.json"]
    back = recording.read_records(tmp_path)
    assert [r["variant"] for r in back] == ["head_only", "lora", "nf4_lora"]
    assert back[1] == json.loads(json.dumps(records[2]))


def test_incomplete_records_are_refused(records, tmp_path):
    broken = copy.deepcopy(records[0])
    del broken["metrics"]["roc_auc"], broken["train_seconds"]
    with pytest.raises(ValueError, match=r"train_seconds.*metrics.roc_auc"):
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

    monkeypatch.setattr(recording.json, "dump", crash)
    with pytest.raises(OSError, match="disk full"):
        recording.write_record({**records[0], "train_seconds": 99.0}, tmp_path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file left behind"


def test_a_damaged_record_is_named_in_the_error(records, tmp_path):
    path = recording.write_record(records[0], tmp_path)
    path.write_text(path.read_text()[:50])
    with pytest.raises(ValueError, match=f"{path.name} is not valid JSON"):
        recording.read_records(tmp_path)
