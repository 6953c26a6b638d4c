import pytest

from peft_sentiment import VARIANTS
from peft_sentiment.report import check_record
from peft_sentiment.train import TokenCounter, build_variant, make_trainer, make_training_args, train_variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_few_steps_lower_the_loss_on_a_learnable_set(
    variant, toy_cfg, tiny_model_path, tokenizer, toy_tokenized, lora_config, bnb_config
):
    model = build_variant(variant, tiny_model_path, tokenizer, seed=0, lora_config=lora_config, bnb_config=bnb_config)
    args = make_training_args(
        toy_cfg, variant, max_steps=24, eval_strategy="no", logging_steps=4, learning_rate=1e-2, warmup_steps=0
    )
    trainer = make_trainer(model, tokenizer, args, toy_tokenized["train"], toy_tokenized["validation"])
    before = trainer.evaluate(toy_tokenized["train"])["eval_loss"]
    trainer.train()
    after = trainer.evaluate(toy_tokenized["train"])["eval_loss"]
    assert after < before - 0.05, (before, after)


def test_token_counter_splits_train_and_eval(toy_cfg, tiny_model_path, tokenizer, toy_tokenized):
    model = build_variant("head_only", tiny_model_path, tokenizer, seed=0)
    trainer = make_trainer(
        model, tokenizer, make_training_args(toy_cfg, "head_only", eval_strategy="no"), toy_tokenized["train"], None
    )
    counter = TokenCounter(trainer.model)
    trainer.train()
    trainer.evaluate(toy_tokenized["test"])
    assert counter.tokens["train"]["real"] == sum(toy_tokenized["train"]["length"])  # one epoch, every token once
    assert counter.tokens["eval"]["real"] == sum(toy_tokenized["test"]["length"])
    assert counter.tokens["train"]["padded"] >= counter.tokens["train"]["real"]


def test_train_variant_writes_a_complete_record(toy_cfg, tiny_model_path, tokenizer, toy_tokenized, lora_config):
    model = build_variant("lora", tiny_model_path, tokenizer, seed=0, lora_config=lora_config)
    _, record = train_variant(toy_cfg, "lora", model, tokenizer, toy_tokenized)
    check_record(record)
    m = record["metrics"]
    assert 0 <= m["accuracy"] <= 1 and m["test_reviews"] == toy_cfg.test_size
    assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
    assert record["params"]["trainable"] < record["params"]["total"]
    assert record["train_tokens_per_s"] > 0 and record["peak_memory_bytes"]["train"] > 0
    assert any("eval_accuracy" in e for e in record["log_history"]), "validation runs during training"


def test_same_seed_same_metrics(toy_cfg, tiny_model_path, tokenizer, toy_tokenized):
    results = []
    for _ in range(2):
        model = build_variant("head_only", tiny_model_path, tokenizer, seed=toy_cfg.seed)
        results.append(train_variant(toy_cfg, "head_only", model, tokenizer, toy_tokenized)[1]["metrics"])
    assert results[0] == results[1]
