"""bench/curve.py on the toy data: every training size scored on the same validation reviews, which no size trains on."""

import json

import pytest
from conftest import bench_sets, load_bench


def test_every_size_is_scored_on_the_same_reviews_no_size_trains_on(toy_imdb_dir, tmp_path):
    bench = load_bench("curve")
    sets = bench_sets(toy_imdb_dir, tmp_path, head_epochs=2)
    argv = ["--profile", "smoke", "--variant", "head_only", "--sizes", "32", "64", "--val-size", "32", "--set", *sets]
    assert bench.main(argv) == 0
    record = json.loads((tmp_path / "records" / "curve" / "head_only.json").read_text())
    assert list(record["sizes"]) == ["32", "64"] and len(record["what_else_ran"]) == 2
    for size in record["sizes"].values():
        assert size["all"]["n"] == 32 and 0 <= size["all"]["accuracy"] <= 1 and size["train_tokens"] > 0
    cfg = bench.make_config("smoke", **bench.parse_overrides(sets))
    splits = bench.carve_validation(cfg, [32, 64], 32)
    assert splits[32]["validation"]["text"] == splits[64]["validation"]["text"]  # paired across sizes
    assert [len(splits[s]["train"]) for s in (32, 64)] == [32, 64]
    trained = set(splits[32]["train"]["text"]) | set(splits[64]["train"]["text"])
    assert not set(splits[32]["validation"]["text"]) & trained
    assert record["validation_labels"] == list(splits[32]["validation"]["label"])
    assert (tmp_path / "records" / "curve" / "curve.png").is_file()
    section = bench.curve_section([record])
    assert "| head-only | 32 |" in section and "| head-only | 64 |" in section and "(p = " in section

    # --resume keeps what is recorded: nothing trains again
    assert bench.main([*argv, "--resume"]) == 0
    assert json.loads((tmp_path / "records" / "curve" / "head_only.json").read_text())["sizes"] == record["sizes"]


def test_the_committed_curve_block_is_the_one_the_committed_records_give():
    bench = load_bench("curve")
    root = bench.Path(bench.__file__).resolve().parents[1]
    records = bench.read_records(root / "results" / "cpu" / "curve")
    if not records:
        pytest.skip("no committed learning-curve record yet")
    text = (root / "docs" / "benchmarks.md").read_text()
    block = text.split("<!-- curve:start -->\n")[1].split("\n<!-- curve:end -->")[0]
    assert block == bench.curve_section(records), "regenerate with python bench/curve.py --report --readme docs/benchmarks.md"
