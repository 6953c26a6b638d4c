import json
import shutil

import pytest
import torch

from peft_sentiment import catalog, inference, models
from peft_sentiment.hardware import resolve_precision
from peft_sentiment.variants import VARIANTS

LABELS = ["neg", "pos"]
ADAPTERS = [name for name, variant in VARIANTS.items() if variant.trains == "adapter"]  # each saves an adapter


def perturbed(cfg, variant: str, model_path, tokenizer, labels=LABELS):
    """The declared variant's model with non-zero LoRA B and a moved head, so that the adapter visibly matters."""
    model = models.build_model(cfg, VARIANTS[variant], model_path, tokenizer, labels)
    with torch.no_grad():  # B starts at zero; make the adapter matter so the test can see it
        for name, p in model.named_parameters():
            if "lora_B" in name or ".score." in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, toy_cfg, tiny_model_path, tokenizer):
    """Each declared adapter variant's adapter (with perturbed, non-zero B) saved to disk: {name: (model, folder)}."""
    folder = tmp_path_factory.mktemp("adapters")
    out = {}
    for name in ADAPTERS:
        variant = VARIANTS[name]
        model = perturbed(toy_cfg, name, tiny_model_path, tokenizer)
        bnb_config = variant.quantization(toy_cfg) if variant.quantization else None
        meta = inference.trained_meta(toy_cfg, variant, tiny_model_path, LABELS, bnb_config)
        out[name] = (model, inference.save_trained(model, tokenizer, folder / name, meta))
    return out


@pytest.mark.parametrize("variant", ADAPTERS)
def test_save_load_gives_identical_logits(saved, variant, tokenizer):
    model, folder = saved[variant]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "peft_sentiment.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    reloaded, reloaded_tokenizer = inference.load_adapter(folder)
    batch = tokenizer(["the movie was great", "a dull and awful plot the end"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    assert inference.predict_reviews(model, tokenizer, ["good film"], 32) == inference.predict_reviews(
        reloaded, reloaded_tokenizer, ["good film"], 32
    )


def test_nf4_adapter_reloads_its_embedding_precision(saved, tmp_path):
    folder = saved["nf4_lora"][1]
    reloaded, _ = inference.load_adapter(folder)
    assert {m.weight.dtype for m in reloaded.modules() if isinstance(m, torch.nn.Embedding)} == {torch.bfloat16}
    # an adapter saved before the field existed was trained on fp32 embeddings: it gets them back
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    meta = json.loads((legacy / inference.META_FILE).read_text())
    del meta["embedding_dtype"]
    (legacy / inference.META_FILE).write_text(json.dumps(meta))
    reloaded, _ = inference.load_adapter(legacy)
    assert {m.weight.dtype for m in reloaded.modules() if isinstance(m, torch.nn.Embedding)} == {torch.float32}


def test_the_model_card_adds_this_projects_section_to_pefts(saved):
    from huggingface_hub import ModelCard

    card = ModelCard.load(saved["nf4_lora"][1] / "README.md")
    assert card.data.library_name == "peft" and "## Model Details" in card.text  # peft's own card, kept
    section = card.text.split("## peft_sentiment: ", 1)[1]  # ours, added after it
    assert section.startswith("`nf4_lora` on `tiny-gpt2`, stanfordnlp/imdb")  # the dataset is named
    assert "Profile `smoke`" in section and "classes ['neg', 'pos']" in section and "NF4" in section


def test_the_card_section_names_hub_bases_data_and_metrics_and_no_machine_path(saved, records):
    # a base with a Hub id is recorded by it, for AutoPeftModel, and the card says where its weights came from
    assert catalog.hub_base_model("smollm2-135m", "/any/cache/smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert catalog.hub_base_model("gpt2", "gpt2") == "gpt2"
    smollm2 = {"variant": "lora", "base_model": "smollm2-135m", "hub_base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
               "profile": "cpu", "max_length": 256, "labels": ["negative", "neutral", "positive"], "quantization": None,
               "dataset": "my_reviews"}  # fmt: skip
    record = records[2] | {"config": {"train_size": 90, "val_size": 12, "seed": 42}, "command": "python -m peft_sentiment train"}
    section = inference.model_card_section(smollm2, record)
    assert "`lora` on `HuggingFaceTB/SmolLM2-135M-Instruct`, my_reviews" in section and "Q4_1 GGUF" in section
    assert "classes ['negative', 'neutral', 'positive']" in section and "macro F1 0.8800" in section
    assert "Data: train 90, validation 12, test 100 (seed 42)" in section and "`python -m peft_sentiment train`" in section
    # a base built here has only a local folder: the section names its short name instead
    tiny = json.loads((saved["lora"][1] / inference.META_FILE).read_text())
    assert tiny["hub_base_model"].startswith("/") and tiny["hub_base_model"] not in inference.model_card_section(tiny, None)


@pytest.mark.parametrize("variant", ADAPTERS)
def test_auto_peft_model_loads_the_adapter_where_its_base_resolves(saved, variant, tokenizer):
    """Without this project: peft's own loader finds the base named in adapter_config.json (here, a local folder)."""
    from peft import AutoPeftModelForSequenceClassification

    model, folder = saved[variant]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["score"]  # the head these models have (peft's default adds `classifier`)
    kwargs = {}
    quantized = VARIANTS[variant].quantization is not None
    if quantized:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig.from_dict(inference.check_adapter_dir(folder)["quantization"])
    plain = AutoPeftModelForSequenceClassification.from_pretrained(folder, **kwargs).eval()
    ids = tokenizer(["the movie was great"], return_tensors="pt")  # one review: no padding, so no pad id needed
    with torch.no_grad():
        plain_logits, logits = plain(**ids).logits, model(**ids).logits
    if not quantized:  # stock GELU there, the project's fused one here: the same function
        torch.testing.assert_close(plain_logits, logits, rtol=1e-5, atol=1e-5)
    else:  # peft's loader keeps the embeddings in fp32, where the project stores NF4's in bf16
        torch.testing.assert_close(plain_logits, logits, rtol=0.1, atol=0.05)


def test_nf4_adapter_reloads_as_trained_unless_the_cpu_kernel_is_asked_for(saved, force_bf16_cpu_kernels):
    from peft_sentiment import models

    force_bf16_cpu_kernels()  # as on a CPU with AVX512-BF16
    folder = saved["nf4_lora"][1]
    for allowed, kernel in ((False, "dequantize to the compute dtype, then matmul"), (True, "packed bf16")):
        model, tokenizer = inference.load_adapter(folder, cpu_inference_kernel=allowed)
        inference.predict_reviews(model, tokenizer, ["a good film"], 32)
        assert kernel in models.nf4_kernel(model)


def test_predict_reviews_keeps_order_and_gives_probabilities(saved, tokenizer):
    model, _ = saved["lora"]
    texts = ["good"] * 3 + ["awful dull"] * 3
    modes = []  # no autograd graph while predicting (the model's LoRA weights do require grad)
    hook = model.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))
    try:
        out = inference.predict_reviews(model, tokenizer, texts, max_length=16, batch_size=4)
    finally:
        hook.remove()
    assert modes == [True, True]
    assert len(out) == 6 and all(o["label"] in ("neg", "pos") and 0.5 <= o["probability"] <= 1 for o in out)
    assert out[0] == out[1] == out[2]
    for o in out:  # every class's probability, the label the most probable one's
        assert len(o["probabilities"]) == 2 and sum(o["probabilities"]) == pytest.approx(1)
        assert o["probability"] == max(o["probabilities"]) and o["label"] == LABELS[o["probabilities"].index(o["probability"])]


def test_incomplete_or_unsafe_adapter_folders_are_refused(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference.load_adapter(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(saved["lora"][1], broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        inference.load_adapter(broken)
    (broken / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle"):
        inference.load_adapter(broken)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(saved["lora"][1], corrupt)
    (corrupt / inference.META_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        inference.load_adapter(corrupt)


def test_a_crash_mid_save_leaves_the_previous_adapter_intact(saved, tokenizer, tmp_path, monkeypatch):
    model, source = saved["lora"]
    target = tmp_path / "saved_f32_lora"
    meta = json.loads((source / inference.META_FILE).read_text())
    inference.save_trained(model, tokenizer, target, meta)
    before = (target / "adapter_model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(inference, "model_card_section", crash)
    with pytest.raises(OSError, match="disk full"):
        inference.save_trained(model, tokenizer, target, meta)
    assert (target / "adapter_model.safetensors").read_bytes() == before
    inference.load_adapter(target)  # still loads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_f32_lora"], "no temporary folder left behind"


def test_saving_offline_looks_nothing_up_and_warns_nothing(saved, tokenizer, tmp_path, recwarn):
    model, source = saved["lora"]
    # a committed adapter names its Hub base, which is out of reach here (the toy's names a local folder)
    meta = json.loads((source / inference.META_FILE).read_text()) | {"hub_base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    inference.save_trained(model, tokenizer, tmp_path / "adapter", meta)
    assert not [w for w in recwarn if "config" in str(w.message) or "remote file" in str(w.message)]
    assert "embed_tokens" not in str(safe_open_keys(tmp_path / "adapter" / "adapter_model.safetensors"))
    card = (tmp_path / "adapter" / "README.md").read_text()  # a base with a Hub id: the card names no machine path
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "/tmp" not in card and "/pytest-" not in card


def safe_open_keys(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


def test_adapter_on_another_base_is_refused(saved, tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    other = tmp_path / "wider-gpt2"
    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=300, n_positions=64)).save_pretrained(
        other
    )
    with pytest.raises(ValueError, match="was trained on tiny-gpt2"):
        inference.load_adapter(saved["lora"][1], model_path=str(other))


def test_an_adapter_of_three_classes_reloads_with_their_names(toy_cfg, tiny_model_path, tokenizer, tmp_path):
    names = ["negative", "neutral", "positive"]
    model = perturbed(toy_cfg, "lora", tiny_model_path, tokenizer, names)
    meta = inference.trained_meta(toy_cfg, VARIANTS["lora"], tiny_model_path, names, None)
    folder = inference.save_trained(model, tokenizer, tmp_path / "three", meta)
    assert inference.check_adapter_dir(folder)["labels"] == names
    reloaded, reloaded_tokenizer = inference.load_adapter(folder)
    assert reloaded.config.id2label == dict(enumerate(names))
    texts = ["a good film", "the plot was dull"]
    out = inference.predict_reviews(reloaded, reloaded_tokenizer, texts, 32, **{"precision": meta["precision"]})
    assert out == inference.predict_reviews(model, tokenizer, texts, 32, precision=meta["precision"])
    assert all(len(o["probabilities"]) == 3 and o["label"] in names for o in out)


@pytest.mark.parametrize("variant", ADAPTERS)
def test_merged_model_predicts_like_the_adapter_and_serves_through_a_pipeline(saved, variant, tmp_path):
    from transformers import pipeline

    model, folder = saved[variant]
    merged = inference.merge_adapter(folder, tmp_path / "merged")
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    texts = ["the movie was great", "a dull and awful plot the end", "fine"]
    served = pipeline("text-classification", model=str(merged), device=-1)(texts)  # no prompt suffix on the toy data
    # a merged model is unquantized: its reference is the adapter on the unquantized base
    reference = inference.load_adapter(folder, quantized=False)[0] if VARIANTS[variant].quantization else model
    expected = inference.predict_reviews(reference, inference.load_tokenizer(folder), texts, 32)
    assert [s["label"] for s in served] == [e["label"] for e in expected]
    assert [s["score"] for s in served] == pytest.approx([e["probability"] for e in expected], abs=1e-5)


def test_an_adapter_encodes_reviews_the_way_it_was_trained(saved, toy_cfg, tokenizer, tiny_model_path, tmp_path):
    import dataclasses

    model, folder = saved["lora"]
    cfg = dataclasses.replace(toy_cfg, truncation="tail", truncation_head_share=0.5, precision="fp32")
    tail = tmp_path / "tail"
    inference.save_trained(model, tokenizer, tail, inference.trained_meta(cfg, VARIANTS["lora"], tiny_model_path, LABELS, None))
    meta = inference.check_adapter_dir(tail)
    expected = {"max_length": cfg.max_length, "suffix": "", "truncation": "tail", "head_share": 0.5, "precision": "fp32"}
    assert inference.encoding(meta, "recorded") == expected
    long_review = " ".join(["good"] * 30 + ["awful"] * 30)
    reloaded, reloaded_tokenizer = inference.load_adapter(tail)
    as_trained = inference.predict_reviews(reloaded, reloaded_tokenizer, [long_review], **inference.encoding(meta, "recorded"))
    assert as_trained == inference.predict_reviews(model, tokenizer, [long_review], cfg.max_length, truncation="tail")
    assert as_trained != inference.predict_reviews(model, tokenizer, [long_review], cfg.max_length, truncation="head")
    legacy = {k: v for k, v in meta.items() if not k.startswith("truncation")}  # saved before the setting existed
    assert inference.encoding(legacy)["truncation"] == "head"
    assert inference.encoding({k: v for k, v in meta.items() if k != "precision"}, "recorded")["precision"] == "fp32"
    # by default, what this machine computes natively; the output says how that relates to the record
    assert inference.encoding(meta)["precision"] == resolve_precision("auto")
    assert "trained and recorded in" in inference.describe_prediction_precision(meta, "recorded")
    with pytest.raises(ValueError, match="choose one of auto, recorded, fp32, bf16, fp16"):
        inference.encoding(meta, "half")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_reloaded_adapter_predicts_what_the_trainer_recorded_in_its_precision(
    precision, saved, toy_cfg, tokenizer, tiny_model_path, toy_splits, toy_tokenized, tmp_path
):
    """bf16 is forced on every CPU (emulated where it is not native), so both machines' paths run everywhere."""
    import dataclasses

    from transformers import Trainer

    from peft_sentiment import train

    model, _ = saved["lora"]
    cfg = dataclasses.replace(toy_cfg, precision=precision, work_dir=str(tmp_path / "work"))
    folder = inference.save_trained(
        model, tokenizer, tmp_path / "adapter", inference.trained_meta(cfg, VARIANTS["lora"], tiny_model_path, LABELS, None)
    )
    meta = inference.check_adapter_dir(folder)
    # what a record holds: the Trainer's evaluation, under the autocast of the run's precision
    evaluated = inference.load_adapter(folder)[0]
    args = train.make_training_args(cfg, VARIANTS["lora"], eval_strategy="no")
    trainer = Trainer(model=evaluated, args=args, data_collator=train.make_collator(tokenizer))
    _, probabilities = train.predict_in_order(trainer, toy_tokenized["test"].select(range(16)))
    recorded = probabilities[:, 1].tolist()  # a binary record keeps P(pos)

    reloaded, reloaded_tokenizer = inference.load_adapter(folder)
    texts = toy_splits["test"]["text"][:16]
    as_trained = positive(inference.predict_reviews(reloaded, reloaded_tokenizer, texts, **inference.encoding(meta, "recorded")))
    in_fp32 = positive(inference.predict_reviews(reloaded, reloaded_tokenizer, texts, cfg.max_length))
    assert as_trained == pytest.approx(recorded, abs=1e-5)
    if precision == "bf16":  # bf16 rounding is visible: predicting in fp32 would not reproduce the record
        assert max(abs(a - b) for a, b in zip(in_fp32, recorded, strict=True)) > 1e-4


def positive(outputs) -> list[float]:
    """P(pos) of each of `predict_reviews`' results: what a binary record keeps."""
    return [o["probabilities"][1] for o in outputs]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # auto picks bf16 on CPUs with AVX512-BF16: both forced
def test_full_finetune_saves_a_whole_model_that_reproduces_its_record(precision, toy_cfg, toy_splits, tmp_path):
    import dataclasses

    from peft_sentiment import experiment

    cfg = dataclasses.replace(
        toy_cfg, precision=precision, save_dir=str(tmp_path / "saved"), records_dir=str(tmp_path / "records"),
        work_dir=str(tmp_path / "work"),
    )  # fmt: skip
    (record,) = experiment.run_training(cfg, ["full_finetune"], splits=toy_splits)
    assert (tmp_path / "records" / "full_finetune.json").is_file()
    assert record["params"]["trainable"] == record["params"]["total"] > 0  # every weight trained
    assert record["precision"] == precision
    folder = experiment.save_dir(cfg, VARIANTS["full_finetune"])
    assert folder == tmp_path / "saved" / "saved_full_finetune"
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", inference.META_FILE, "tokenizer.json", "README.md"} <= files
    assert "adapter_config.json" not in files  # a plain save_pretrained folder: transformers loads it alone
    meta = inference.check_adapter_dir(folder)
    assert meta["kind"] == "model" and meta["variant"] == "full_finetune" and meta["precision"] == precision
    model, tokenizer = inference.load_adapter(folder)
    out = inference.predict_reviews(model, tokenizer, toy_splits["test"]["text"], **inference.encoding(meta, "recorded"))
    assert positive(out) == pytest.approx(record["predictions"], abs=1e-5)
    with pytest.raises(ValueError, match="whole model already"):
        inference.merge_adapter(folder, tmp_path / "merged")
