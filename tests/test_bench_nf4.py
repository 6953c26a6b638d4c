"""bench/nf4.py and bench/prediction.py: the NF4 study's measurements and the prediction-precision comparison."""

import dataclasses
import json

import pytest
import torch
from conftest import bench_sets, load_bench

from peft_sentiment import models

nf4 = load_bench("nf4")
prediction = load_bench("prediction")


def test_layer_groups_split_by_role_and_by_depth():
    names = [f"model.layers.{i}.self_attn.{p}" for i in range(6) for p in ("q_proj", "v_proj")]
    groups = nf4.layer_groups(names)
    assert groups["v_proj"] == [n for n in names if n.endswith("v_proj")] and len(groups["q_proj"]) == 6
    assert [len(groups[part]) for part in ("first third", "middle third", "last third")] == [4, 4, 4]
    assert "model.layers.5.self_attn.q_proj" in groups["last third"]


def test_nf4_rounds_a_gaussian_weight_by_about_a_tenth_of_its_norm():
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    error = nf4.relative_error(nf4.nf4_round_trip(weight), weight)
    assert 0.05 < error < 0.15  # 16 levels per block of 64: about 9% (bench/nf4.py rounding measures the model's)
    assert nf4.relative_error(weight, weight) == 0


def test_weight_bytes_count_the_4bit_scales_that_double_quantization_shrinks(toy_cfg, tiny_model_path, tokenizer):
    def loaded(**changes):
        cfg = dataclasses.replace(toy_cfg, **changes)
        return models.load_classifier(tiny_model_path, tokenizer.pad_token_id, ["neg", "pos"], models.make_nf4_config(cfg))

    fp32 = nf4.weight_bytes(models.load_classifier(tiny_model_path, tokenizer.pad_token_id, ["neg", "pos"]))
    double, single = nf4.weight_bytes(loaded()), nf4.weight_bytes(loaded(nf4_double_quant=False))
    skipped = nf4.weight_bytes(loaded(nf4_skip_modules=("c_attn", "score")))
    # counted both ways (get_memory_footprint sees neither); double quantization saves bytes at SmolLM2's size
    # (results/nf4/footprint.json), while on layers this small its fixed 256-entry code per layer costs more
    assert double != single and max(double, single) < skipped < fp32  # an unquantized layer costs its fp32 bytes again


def test_prediction_movement_names_the_labels_that_flip():
    moved = prediction.movement([0.522, 0.1, 0.9], [0.49585, 0.1, 0.88])
    assert moved["max_abs_delta"] == pytest.approx(0.02615) and moved["mean_abs_delta"] == pytest.approx(0.01538, abs=1e-5)
    assert moved["flips"] == [{"review": 0, "recorded": 0.49585, "now": 0.522}]


def test_the_frozen_pair_scores_the_head_on_the_nf4_base_too(toy_imdb_dir, tmp_path, monkeypatch):
    """`frozen`'s NF4 head-only trains and scores like head-only (the truncation bench's path), declared only for it."""
    from peft_sentiment.variants import VARIANTS

    truncation = load_bench("truncation")
    assert "nf4_head_only" not in VARIANTS  # importing the bench declared nothing
    monkeypatch.setitem(VARIANTS, "nf4_head_only", nf4.NF4_HEAD_ONLY)
    sets = bench_sets(toy_imdb_dir, tmp_path, train_size=32, head_epochs=2)
    argv = ["--profile", "smoke", "--variant", "nf4_head_only", "--settings", "head", "--val-size", "24", "--set", *sets]
    assert truncation.main(argv) == 0
    record = json.loads((tmp_path / "records" / "truncation" / "nf4_head_only.json").read_text())
    assert record["evaluated_on"] == "validation" and record["settings"]["head"]["all"]["n"] == 24
