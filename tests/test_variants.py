"""A variant is one declaration: a new one trains, records and reports with no other change; names live in one place."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

from peft_sentiment import cli, experiment, inference, models, plots, recording, report, train, variants
from peft_sentiment.variants import VARIANTS, Variant

PACKAGE = Path(variants.__file__).parent


@pytest.fixture
def declared():
    """`variants.declare`, with the declarations restored afterwards (in place: every module holds the same dict)."""
    before = dict(VARIANTS)
    yield variants.declare
    VARIANTS.clear()
    VARIANTS.update(before)


def build_last_block_attention_lora(cfg, model_path, labels, pad_token_id):
    """A recipe of one's own: LoRA of rank 2 on the last block's attention projection only (tiny-gpt2 has blocks 0, 1)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_path, **models.label_names(labels),
                                                               pad_token_id=pad_token_id)  # fmt: skip
    lora_config = LoraConfig(
        task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["c_attn"], layers_to_transform=[1], layers_pattern="h",
        fan_in_fan_out=True,
    )  # fmt: skip
    return get_peft_model(model, lora_config)


TOY = Variant(
    "toy_rank2", "rank-2 attention LoRA", trains="adapter", learning_rate="lr_lora", build=build_last_block_attention_lora,
    save_dir="saved_toy_rank2", compared_with="head_only",
)  # fmt: skip


def test_the_package_declares_four_variants_in_table_order():
    assert list(VARIANTS) == ["head_only", "lora", "nf4_lora", "full_finetune"]
    assert [v.trains for v in VARIANTS.values()] == ["head", "adapter", "adapter", "all"]
    assert VARIANTS["nf4_lora"].quantization is models.make_nf4_config and VARIANTS["nf4_lora"].gradient_checkpointing
    assert {v.learning_rate for v in VARIANTS.values()} == {"lr_head", "lr_lora", "lr_full"}
    assert all(v.compared_with in VARIANTS for v in VARIANTS.values() if v.compared_with)


def test_a_declared_variant_trains_records_and_reports_with_no_other_change(
    declared, toy_cfg, toy_splits, toy_imdb_dir, tmp_path, capsys
):
    declared(TOY)
    cfg = dataclasses.replace(
        toy_cfg, save_dir=str(tmp_path / "saved"), records_dir=str(tmp_path / "records"), work_dir=str(tmp_path / "work")
    )
    (record,) = experiment.run_training(cfg, ["toy_rank2"], splits=toy_splits)
    written = json.loads((tmp_path / "records" / "toy_rank2.json").read_text())
    assert written["variant"] == "toy_rank2" and written["predictions"] == record["predictions"]
    m = written["metrics"]
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["f1_macro"] <= 1 and m["test_reviews"] == cfg.test_size
    assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
    assert written["train_loss"] > 0 and written["train_tokens"]["real"] > 0
    # its declaration took effect: rank 2 on one projection of one block (and the head), LoRA's learning rate
    head = 64 * 2
    assert written["params"]["trainable"] == head + 2 * (64 + 192)
    assert max(e["learning_rate"] for e in written["log_history"] if "learning_rate" in e) <= cfg.lr_lora
    saved = tmp_path / "saved" / "saved_toy_rank2"
    adapter_config = json.loads((saved / "adapter_config.json").read_text())
    assert adapter_config["r"] == 2 and adapter_config["target_modules"] == ["c_attn"]
    model, _ = inference.load_adapter(saved)
    assert [n for n, mod in model.named_modules() if n.endswith("lora_A")] == [
        "base_model.model.transformer.h.1.attn.c_attn.lora_A"
    ]

    # the command line offers it, and a run through it records the same predictions
    overrides = [f"data_dir='{toy_imdb_dir}'", "train_size=96", "val_size=32", "test_size=64", "max_length=32",
                 f"save_dir='{tmp_path / 'cli'}'", f"records_dir='{tmp_path / 'records'}'", f"work_dir='{tmp_path / 'work'}'"]  # fmt: skip
    argv = ["train", "--profile", "smoke", "--variants", "head_only", "toy_rank2", *[a for o in overrides for a in ("--set", o)]]
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "records" / "toy_rank2.json").read_text())["predictions"] == record["predictions"]
    assert "rank-2 attention LoRA: accuracy" in capsys.readouterr().out

    # tables, summary and plots name it by its label, in declaration order, paired with the variant it declares
    records = recording.read_records(tmp_path / "records", order=VARIANTS)
    assert [r["variant"] for r in records] == ["head_only", "toy_rank2"]
    assert list(report.compare_variants(records).index) == ["head-only", "rank-2 attention LoRA"]
    section = report.results_section(tmp_path / "records")
    assert "| rank-2 attention LoRA |" in section and "- rank-2 attention LoRA vs head-only:" in section
    cost = plots.plot_accuracy_vs_cost(records)
    assert [t.get_text() for t in cost.axes[0].texts] == ["head-only", "rank-2 attention LoRA"]
    assert cli.main(["report", str(tmp_path / "records")]) == 0
    assert "| rank-2 attention LoRA |" in capsys.readouterr().out


def test_each_variants_name_is_written_in_at_most_two_package_files():
    """A variant's name lives in its declaration (and at most one other place): everything else reads the declarations."""
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.suffix == ".py" for p in files) and len(files) > 10
    texts = {p: p.read_text(errors="ignore") for p in files}  # code and data files alike (.py, .json, ...)
    for name in VARIANTS:
        holding = sorted(str(p.relative_to(PACKAGE)) for p, text in texts.items() if re.search(rf"\b{re.escape(name)}\b", text))
        assert "variants.py" in holding and len(holding) <= 2, (name, holding)


def test_a_declaration_is_checked_when_made():
    with pytest.raises(ValueError, match="trains='bias'; choose one of head, adapter, all"):
        Variant("bitfit", "x", trains="bias", learning_rate="lr_head", build=models.build_head_only)
    with pytest.raises(dataclasses.FrozenInstanceError):
        VARIANTS["lora"].label = "changed"


def test_unknown_names_list_the_declared_ones():
    with pytest.raises(
        ValueError, match=r"Unknown variant 'prefix'\. Valid variants: head_only, lora, nf4_lora, full_finetune\."
    ):
        variants.get_variant("prefix")
    with pytest.raises(ValueError, match="Valid variants: head_only, lora"):
        experiment.run_training(None, ["prefix"])  # before any work: no config is even read
    assert variants.label_of("nf4_lora") == "NF4 LoRA" and variants.label_of("retired_variant") == "retired_variant"


def test_training_arguments_take_the_declared_learning_rate(toy_cfg):
    quiet = Variant("quiet", "quiet", trains="head", learning_rate="lr_head", build=models.build_head_only)
    args = train.make_training_args(toy_cfg, quiet, weight_decay=0.3, warmup_steps=0)
    assert (args.learning_rate, args.weight_decay, args.warmup_steps) == (toy_cfg.lr_head, 0.3, 0)
    assert args.output_dir == str(Path(toy_cfg.work_dir) / "quiet")
    assert train.make_training_args(toy_cfg, quiet, weight_decay=0.0).weight_decay == 0.0  # a call's overrides win
    assert train.make_training_args(toy_cfg, VARIANTS["full_finetune"]).learning_rate == toy_cfg.lr_full
