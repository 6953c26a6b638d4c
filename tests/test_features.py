"""The frozen pass: the cached features are exactly what the head sees inside the model."""

import torch
from transformers import DataCollatorWithPadding

from peft_sentiment.features import extract_features
from peft_sentiment.models import build_model
from peft_sentiment.variants import VARIANTS


def test_cached_features_are_exactly_what_the_head_sees(toy_cfg, tiny_model_path, tokenizer, toy_tokenized):
    model = build_model(toy_cfg, VARIANTS["head_only"], tiny_model_path, tokenizer, ["neg", "pos"])
    subset = toy_tokenized["test"].select(range(10))
    features, tokens = extract_features(model, subset, tokenizer, batch_size=4)
    assert tokens["real"] == sum(subset["length"])
    collator = DataCollatorWithPadding(tokenizer)
    with torch.no_grad():
        for i in range(3):  # one review at a time: no padding at all inside the model
            row = collator([subset.select_columns(["input_ids", "attention_mask"])[i]])
            assert torch.allclose(model(**row).logits[0], model.score(features[i]), atol=1e-5)
