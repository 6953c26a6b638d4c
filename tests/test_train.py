import dataclasses
import json

import pytest
import torch
from transformers import DataCollatorWithPadding

from peft_sentiment import features, models, train
from peft_sentiment.features import extract_features, feature_dataset
from peft_sentiment.hardware import autocast
from peft_sentiment.inference import predict_reviews
from peft_sentiment.recording import check_record
from peft_sentiment.train import make_trainer, make_training_args, train_head_on_features, train_variant
from peft_sentiment.variants import VARIANTS

HEAD, LORA, NF4 = VARIANTS["head_only"], VARIANTS["lora"], VARIANTS["nf4_lora"]


def build(variant, cfg, model_path, tokenizer):
    """The declared variant's model on the toy data's classes, as the pipeline builds it."""
    return models.build_model(cfg, variant, model_path, tokenizer, ["neg", "pos"])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_few_steps_lower_the_loss_on_a_learnable_set(name, toy_cfg, tiny_model_path, tokenizer, toy_tokenized):
    variant = VARIANTS[name]
    model = build(variant, toy_cfg, tiny_model_path, tokenizer)
    # full fine-tuning moves every weight: a step ten times smaller, as its declared learning rate is
    lr = 1e-3 if variant.trains == "all" else 1e-2
    args = make_training_args(
        toy_cfg, variant, max_steps=24, eval_strategy="no", logging_steps=4, learning_rate=lr, warmup_steps=0, save_strategy="no"
    )
    trainer = make_trainer(model, tokenizer, args, toy_tokenized["train"], toy_tokenized["validation"])
    before = trainer.evaluate(toy_tokenized["train"])["eval_loss"]
    trainer.train()
    after = trainer.evaluate(toy_tokenized["train"])["eval_loss"]
    assert after < before - 0.05, (before, after)


def test_the_trainer_counts_the_real_tokens_trained_on(toy_cfg, tiny_model_path, tokenizer, toy_tokenized, tmp_path):
    cfg = dataclasses.replace(toy_cfg, work_dir=str(tmp_path))
    model = build(HEAD, cfg, tiny_model_path, tokenizer)
    args = make_training_args(cfg, HEAD, eval_strategy="no", save_strategy="no")
    trainer = make_trainer(model, tokenizer, args, toy_tokenized["train"], toy_tokenized["validation"])
    _, training, checkpoint, tokens = train.fit(trainer, cfg)
    assert tokens == sum(toy_tokenized["train"]["length"])  # one epoch, every real token once, no padding counted
    assert checkpoint is None and training.seconds > 0
    assert train.validation_tokens(trainer, toy_tokenized["validation"]) == 0  # no validation pass ran


def test_train_variant_writes_a_complete_record(toy_cfg, tiny_model_path, tokenizer, toy_tokenized):
    model = build(LORA, toy_cfg, tiny_model_path, tokenizer)
    trainer, record = train_variant(toy_cfg, LORA, model, tokenizer, toy_tokenized)
    check_record(record)
    # on a CPU, malloc's free lists go back to the OS after each step, so the RSS measure is what training needs
    assert any(isinstance(c, train.ReturnFreedMemory) for c in trainer.callback_handler.callbacks)
    assert record["memory_measure"].endswith("after every training step (malloc_trim)")
    assert record["variant"] == "lora" and record["labels"] == ["neg", "pos"]
    assert record["dataset"] == "stanfordnlp/imdb" and record["config"]["data_dir"]  # IMDB, from its local copy
    m = record["metrics"]
    assert 0 <= m["accuracy"] <= 1 and m["test_reviews"] == toy_cfg.test_size
    assert {"f1_macro", "precision", "recall", "f1", "roc_auc"} <= set(m)  # two classes: the binary scores too
    assert len(record["predictions"]) == toy_cfg.test_size and all(isinstance(p, float) for p in record["predictions"])
    assert record["test_labels"] == toy_tokenized["test"]["label"]
    assert record["train_tokens"] == {"real": sum(toy_tokenized["train"]["length"])}  # one epoch
    assert record["eval_tokens"] == {"real": sum(toy_tokenized["test"]["length"])}
    assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
    assert record["params"]["trainable"] < record["params"]["total"]
    assert record["train_tokens_per_s"] > 0 and record["peak_memory_bytes"]["train"] > 0
    assert any("eval_accuracy" in e for e in record["log_history"]), "validation runs during training"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_same_seed_same_metrics(name, toy_cfg, tiny_model_path, tokenizer, toy_tokenized):
    results = []
    for _ in range(2):
        model = build(VARIANTS[name], toy_cfg, tiny_model_path, tokenizer)
        record = train_variant(toy_cfg, VARIANTS[name], model, tokenizer, toy_tokenized)[1]
        results.append((record["metrics"], record["predictions"], record["train_loss"]))
    assert results[0] == results[1]


def test_head_only_resume_reuses_the_saved_features(toy_cfg, tiny_model_path, tokenizer, toy_tokenized, monkeypatch, tmp_path):
    cfg = dataclasses.replace(toy_cfg, work_dir=str(tmp_path / "work"))
    model = build(HEAD, cfg, tiny_model_path, tokenizer)
    first = train_variant(cfg, HEAD, model, tokenizer, toy_tokenized)[1]
    assert sorted(p.name for p in (tmp_path / "work" / "head_only").iterdir()) == [
        "features-test.safetensors",
        "features-train.safetensors",
        "features-validation.safetensors",
    ]

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("the frozen forward pass ran again")

    monkeypatch.setattr(features, "extract_features", no_forward_pass)
    model = build(HEAD, cfg, tiny_model_path, tokenizer)
    resumed = train_variant(cfg, HEAD, model, tokenizer, toy_tokenized, resume=True)[1]
    assert resumed["metrics"] == first["metrics"] and resumed["predictions"] == first["predictions"]
    # other reviews are never served stale features: they are computed (here: refused by the patch)
    with pytest.raises(AssertionError, match="ran again"):
        train_variant(cfg, HEAD, model, tokenizer, {**toy_tokenized, "test": toy_tokenized["test"].select(range(8))}, resume=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16 forced: emulated on CPUs without it, native on the others
def test_head_on_cached_features_trains_the_models_own_head(precision, toy_cfg, tiny_model_path, tokenizer, toy_tokenized):
    cfg = dataclasses.replace(toy_cfg, precision=precision)
    model = build(HEAD, cfg, tiny_model_path, tokenizer)
    start = model.score.weight.detach().clone()
    trainer, result = train_head_on_features(cfg, HEAD, model, tokenizer, toy_tokenized)
    assert not torch.equal(model.score.weight, start), "the trained head is the model's head"
    assert result["train_tokens"]["real"] == sum(toy_tokenized["train"]["length"])  # one forward pass per review
    assert result["metrics"]["test_reviews"] == len(toy_tokenized["test"])
    # the whole model now predicts what the head predicted on cached features
    probs = trainer.predict(
        feature_dataset(
            extract_features(model, toy_tokenized["test"], tokenizer, 8, precision)[0], toy_tokenized["test"]["label"]
        )
    )
    rows = DataCollatorWithPadding(tokenizer)([toy_tokenized["test"].select_columns(["input_ids", "attention_mask"])[0]])
    with torch.no_grad(), autocast(precision, "cpu"):  # as the run computed: its precision's autocast
        assert torch.allclose(model(**rows).logits[0].float(), torch.as_tensor(probs.predictions[0]), atol=1e-5)


def test_recorded_predictions_are_in_test_order(toy_cfg, tiny_model_path, tokenizer, toy_splits, toy_tokenized):
    model = build(LORA, toy_cfg, tiny_model_path, tokenizer)
    _, record = train_variant(toy_cfg, LORA, model, tokenizer, toy_tokenized)
    texts = toy_splits["test"]["text"][:8]
    again = predict_reviews(model.eval(), tokenizer, texts, toy_cfg.max_length, toy_cfg.prompt_suffix)
    recorded = record["predictions"][:8]
    assert [o["probabilities"][1] for o in again] == pytest.approx(recorded, abs=1e-5)
    labels = [int(p > 0.5) for p in record["predictions"]]
    hits = sum(a == b for a, b in zip(labels, toy_splits["test"]["label"], strict=True))
    assert hits / len(labels) == pytest.approx(record["metrics"]["accuracy"])


def test_last_checkpoint_passes_over_one_cut_short_by_a_crash(tmp_path):
    # the Trainer writes trainer_state.json last: a checkpoint without it was cut short
    for step, parts in ((6, ("trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_model.safetensors")),
                        (12, ("adapter_model.safetensors", "optimizer.pt"))):  # fmt: skip
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for part in parts:
            (folder / part).write_text("x")
    assert train.last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    assert not (tmp_path / "checkpoint-12").exists(), "the cut-short one is removed: the Trainer would pick it next time"
    assert train.last_checkpoint(tmp_path / "none") is None


def test_checkpoints_resume_only_the_settings_that_wrote_them(toy_cfg, tmp_path, capsys):
    import types

    trainer = types.SimpleNamespace(args=types.SimpleNamespace(output_dir=str(tmp_path)))

    def a_checkpoint(step: int) -> None:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for part in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_model.safetensors"):
            (folder / part).write_text("x")

    assert train.prepare_output_dir(trainer, toy_cfg, resume=False) is None  # a fresh run stamps its settings
    a_checkpoint(8)
    assert train.prepare_output_dir(trainer, toy_cfg, resume=True) == str(tmp_path / "checkpoint-8")
    # another learning rate (or precision) would continue the other run's schedule: refused, saying what differs
    other = dataclasses.replace(toy_cfg, lr_lora=toy_cfg.lr_lora / 2, work_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=r"other settings \(lr_lora: 0.002 there, 0.001 now\).*without resume"):
        train.prepare_output_dir(trainer, other, resume=True)
    # where outputs go is no setting: the same run may write its results elsewhere
    assert train.prepare_output_dir(trainer, dataclasses.replace(toy_cfg, records_dir="x"), resume=True)
    # a fresh start removes the earlier run's checkpoints, which the Trainer's rotation (by step) would keep over its own
    a_checkpoint(125)
    assert train.prepare_output_dir(trainer, other, resume=False) is None
    assert not list(tmp_path.glob("checkpoint-*")) and "removed 2 checkpoint(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / train.RUN_SETTINGS_FILE).read_text())["lr_lora"] == other.lr_lora


def test_peak_memory_samples_rss_or_what_it_is_given():
    import time

    import numpy as np
    import psutil

    with train.PeakMemory(interval_s=0.005) as rss:
        block = np.ones(50_000_000 // 8)  # 50 MB, touched, alive while the peak is read
        time.sleep(0.05)
        now = psutil.Process().memory_info().rss
        # the process's RSS, sampled (not "RSS before + the block": other tests' frees can land in between)
        assert rss.current_peak() >= 0.95 * now and block.nbytes
    del block
    values = iter([5, 40, 7] + [3] * 10_000)
    with train.PeakMemory(interval_s=0.001, read=lambda: next(values)) as given:
        time.sleep(0.05)
    assert (given.start_bytes, given.peak_bytes) == (5, 40)  # the value on entry; the largest read, on any device
    values = iter([50] + [3] * 10_000)
    with train.PeakMemory(interval_s=0.001, read=lambda: next(values)) as freed:
        time.sleep(0.05)
    assert freed.peak_bytes - freed.start_bytes == 0  # a block that only frees added nothing, not a negative


def test_forced_bf16_cpu_detection_really_packs_an_inference_model(
    force_bf16_cpu_kernels, tiny_model_path, tokenizer, toy_tokenized, bnb_config
):
    """The control for the test below: without the guard, one evaluation pass packs every 4-bit layer."""
    force_bf16_cpu_kernels()
    model = models.load_classifier(tiny_model_path, tokenizer.pad_token_id, ["neg", "pos"], bnb_config, cpu_inference_kernel=True)
    batch = DataCollatorWithPadding(tokenizer)([toy_tokenized["test"].select_columns(["input_ids", "attention_mask"])[0]])
    with torch.no_grad():
        model.eval()(**batch)
    assert models.packed_4bit_layers(model) == 2 * 4
    assert "packed bf16" in models.nf4_kernel(model)
    with pytest.raises(RuntimeError, match="packed for CPU inference"):
        models.check_trainable(model)


def test_nf4_evaluate_then_train_on_a_bf16_cpu_equals_an_unpacked_run(
    force_bf16_cpu_kernels, toy_cfg, tiny_model_path, tokenizer, toy_tokenized
):
    """The project's evaluate-then-train sequence (mid-run validation, an untrained baseline) trains the same on both CPUs."""

    def evaluate_then_train():
        model = build(NF4, toy_cfg, tiny_model_path, tokenizer)
        start = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
        args = make_training_args(toy_cfg, NF4, max_steps=4, eval_strategy="no", save_strategy="no", warmup_steps=0)
        trainer = make_trainer(model, tokenizer, args, toy_tokenized["train"], toy_tokenized["validation"])
        trainer.evaluate()
        trainer.train()
        assert models.packed_4bit_layers(model) == 0
        trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return trained, start

    unpacked, start = evaluate_then_train()  # this machine's own detection: no AVX512-BF16 here, or nothing packs anyway
    force_bf16_cpu_kernels()
    on_bf16_cpu, _ = evaluate_then_train()
    # lora_B starts at zero; each one moved, so the gradient reached every quantized layer, the lowest included
    assert len(start) == 2 * 4 and all(not torch.equal(on_bf16_cpu[n], start[n]) for n in start)
    assert on_bf16_cpu.keys() == unpacked.keys()
    for name in unpacked:
        assert torch.equal(on_bf16_cpu[name], unpacked[name]), name


def test_activation_cost_shows_checkpointing_keeps_less_for_backward(toy_cfg, tiny_model_path, tokenizer, toy_tokenized):
    model = build(LORA, toy_cfg, tiny_model_path, tokenizer)
    model.config.use_cache = False
    rows = toy_tokenized["train"].select(range(4)).select_columns(["input_ids", "attention_mask", "label"])
    batch = train.make_collator(tokenizer)(list(rows))
    off = train.activation_cost(model, batch)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    on = train.activation_cost(model, batch)
    assert 0 < on["saved_bytes"] < off["saved_bytes"] / 2  # only each block's input is kept
    assert on["forward_seconds"] <= on["step_seconds"] and off["forward_seconds"] <= off["step_seconds"]
    assert all(p.grad is None for p in model.parameters())  # cleared after each step


def test_memory_split_separates_4bit_storage_from_checkpointing(toy_cfg, tiny_model_path, tokenizer, toy_tokenized):
    probes = {
        "LoRA": build(LORA, toy_cfg, tiny_model_path, tokenizer),
        "NF4 LoRA": build(NF4, toy_cfg, tiny_model_path, tokenizer),
    }
    rows = toy_tokenized["train"].select(range(4)).select_columns(["input_ids", "attention_mask", "label"])
    split = train.memory_split(probes, train.make_collator(tokenizer)(list(rows)))
    cell = {(r["variant"], r["checkpointing"]): r for r in split}
    assert set(cell) == {(v, on) for v in probes for on in (False, True)}
    assert cell["NF4 LoRA", False]["weights_bytes"] < cell["LoRA", False]["weights_bytes"]  # 4-bit storage: the weights
    for v in probes:  # checkpointing: the activations, not the weights
        assert cell[v, True]["saved_bytes"] < cell[v, False]["saved_bytes"] / 2
        assert cell[v, True]["weights_bytes"] == cell[v, False]["weights_bytes"]
    # each model is left as declared: NF4 LoRA with checkpointing, LoRA without
    assert probes["NF4 LoRA"].is_activation_checkpointing and not probes["LoRA"].is_activation_checkpointing


def test_head_only_on_cached_features_trains_with_its_own_arguments(toy_cfg):
    head = train.head_training_args(toy_cfg, HEAD)
    assert head.num_train_epochs == toy_cfg.head_epochs and head.save_strategy == "no"
    assert train.on_cached_features(toy_cfg, HEAD) and not train.on_cached_features(toy_cfg, LORA)
    assert not train.on_cached_features(dataclasses.replace(toy_cfg, head_on_cached_features=False), HEAD)


def test_early_stopping_keeps_the_best_validation_pass_within_the_cap(
    toy_cfg, tiny_model_path, tokenizer, toy_tokenized, tmp_path
):
    """With early_stopping_patience, `epochs` is a cap: the run stops once validation loss stops improving (here at once:
    a learning rate of 0 never improves it) and says its budget up front."""
    cfg = dataclasses.replace(toy_cfg, epochs=10, evals_per_run=20, early_stopping_patience=2, lr_lora=1e-12,
                              work_dir=str(tmp_path))  # fmt: skip
    variant = VARIANTS["lora"]
    args = make_training_args(cfg, variant)
    assert args.load_best_model_at_end and args.metric_for_best_model == "loss" and args.save_steps == args.eval_steps
    assert not train.head_training_args(cfg, VARIANTS["head_only"]).load_best_model_at_end  # a cached head: its epochs
    model = models.build_model(cfg, variant, tiny_model_path, tokenizer, ["neg", "pos"])
    trainer, record = train_variant(cfg, variant, model, tokenizer, toy_tokenized)
    evals = [e for e in record["log_history"] if "eval_loss" in e]
    steps_per_epoch = -(-len(toy_tokenized["train"]) // cfg.train_batch_size)
    assert 3 <= len(evals) < 20 and trainer.state.global_step < 10 * steps_per_epoch  # stopped well before the cap
    assert trainer.state.best_global_step == evals[0]["step"]
    budget = train.describe_budget(cfg, len(toy_tokenized["train"]))
    assert f"at most 10 epochs = {10 * steps_per_epoch} steps" in budget and "2 passes without a better one" in budget
    assert train.describe_budget(toy_cfg, 96) == f"1 epoch(s), {-(-96 // toy_cfg.train_batch_size)} steps of 16"
