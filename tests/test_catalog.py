"""Model names: short names built once offline and reused, clear errors for unknown ones, limits read from the config."""

import pytest

from peft_sentiment import catalog


def test_tiny_model_is_built_once_and_reused(toy_splits, tiny_model_path):
    assert catalog.resolve_model("tiny-gpt2", texts=toy_splits["train"]["text"]) == tiny_model_path
    with pytest.raises(ValueError, match="pass the training texts"):
        catalog.resolve_model("tiny-gpt2")


def test_unknown_short_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Valid short names: tiny-gpt2"):
        catalog.resolve_model("tiny-llama")


def test_tokenizer_gets_a_pad_token(tokenizer):
    assert tokenizer.pad_token == tokenizer.eos_token is not None


def test_max_length_beyond_the_models_positions_is_refused(tiny_model_path):
    catalog.check_max_length(tiny_model_path, 256)
    with pytest.raises(ValueError, match="exceeds the 256 positions"):
        catalog.check_max_length(tiny_model_path, 512)
