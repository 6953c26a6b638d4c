import pytest
import torch
from conftest import load_bench
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig

from peft_sentiment.models import build_model, count_parameters
from peft_sentiment.variants import VARIANTS, get_variant

cost = load_bench("cost")
LABELS = ["neg", "pos"]


def counted(model, ids, mask, train: bool) -> int:
    """FLOPs torch itself counts for a forward (and backward) pass."""
    with FlopCounterMode(display=False) as counter:
        if train:
            model(input_ids=ids, attention_mask=mask, labels=torch.zeros(len(ids), dtype=torch.long)).loss.backward()
        else:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
    return counter.get_total_flops()


@pytest.fixture
def batch():
    ids = torch.randint(5, 100, (3, 40))
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("name", ["head_only", "lora", "full_finetune"])  # NF4's 4-bit matmuls: torch does not count them
def test_counted_flops_match_torch_flop_counter(name, toy_cfg, tiny_model_path, tokenizer, batch):
    variant = get_variant(name)
    model = build_model(toy_cfg, variant, tiny_model_path, tokenizer, LABELS)
    model.train()
    params = cost.matmul_params(model)
    layers, hidden = cost.attention_shape(model)
    assert (layers, hidden) == (2, 64)
    assert params["trained"] > 0 and (params["below_head"] > 0) == (variant.trains != "head")
    assert (params["frozen"] == 0) == (variant.trains == "all")
    lengths = [40, 40, 40]
    assert cost.forward_flops(params, layers, hidden, lengths) == counted(model, *batch, train=False)
    # backward: LoRA's first layer needs no input gradient, which the count ignores (a 2-layer model
    # exaggerates that: 12 layers make it under 1%); full fine-tuning needs every one (the embeddings train)
    expected = counted(model, *batch, train=True)
    assert cost.training_flops(params, layers, hidden, lengths) == pytest.approx(expected, rel=0.12)


def test_nf4_weights_count_as_the_weights_they_stand_for(toy_cfg, tiny_model_path, tokenizer):
    fp32 = build_model(toy_cfg, get_variant("lora"), tiny_model_path, tokenizer, LABELS)
    nf4 = build_model(toy_cfg, get_variant("nf4_lora"), tiny_model_path, tokenizer, LABELS)
    assert cost.matmul_params(nf4) == cost.matmul_params(fp32)


def test_recompute_adds_one_forward_and_padding_costs_flops():
    params = {"frozen": 1000, "trained": 10, "below_head": 8}
    plain = cost.training_flops(params, 2, 16, [10, 20])
    assert cost.training_flops(params, 2, 16, [10, 20], recompute=True) == plain + cost.forward_flops(params, 2, 16, [10, 20])
    assert cost.forward_flops(params, 2, 16, [20, 20]) > cost.forward_flops(params, 2, 16, [10, 20])


def test_matmul_peak_is_a_positive_rate():
    assert cost.measure_matmul_peak(n=128, repeats=2) > 1e6


def test_memory_estimate_matches_every_built_variant_and_orders_them(toy_cfg, tiny_model_path, tokenizer):
    config = AutoConfig.from_pretrained(tiny_model_path)
    est = {name: cost.estimate_training_memory(config, v, batch=8, seq_len=128, lora_r=4) for name, v in VARIANTS.items()}
    for name, variant in VARIANTS.items():  # the estimate reads the declaration: what trains, quantized or not
        model = build_model(toy_cfg, variant, tiny_model_path, tokenizer, LABELS)
        assert est[name]["trainable_params"] == count_parameters(model)["trainable"], name
        assert est[name]["weights"] == pytest.approx(model.get_memory_footprint(), rel=0.1), name
    assert est["head_only"]["activations"] < est["nf4_lora"]["activations"] < est["lora"]["activations"]
    assert est["head_only"]["optimizer"] == 8 * 64 * 2  # AdamW: two fp32 moments per head weight
    full = est["full_finetune"]
    assert full["trainable_params"] == full["params"] and full["optimizer"] == 8 * full["params"]  # every weight trains
    assert full["activations"] == est["lora"]["activations"]  # the same graph kept for backward (no LoRA dropout here)
    with_gc = cost.estimate_training_memory(config, get_variant("lora"), batch=8, seq_len=128, lora_r=4, checkpointing=True)
    assert with_gc["activations"] == est["nf4_lora"]["activations"]
    longer = cost.estimate_training_memory(config, get_variant("lora"), batch=8, seq_len=256, lora_r=4)
    assert longer["activations"] > 2 * est["lora"]["activations"]  # attention grows with the square of the length


def test_memory_estimate_counts_what_lora_dropout_keeps(toy_cfg, tiny_model_path, tokenizer):
    from peft.tuners.lora import LoraLayer

    config, lora = AutoConfig.from_pretrained(tiny_model_path), get_variant("lora")
    plain = cost.estimate_training_memory(config, lora, batch=8, seq_len=128, lora_r=4)
    dropped = cost.estimate_training_memory(config, lora, batch=8, seq_len=128, lora_r=4, lora_dropout=0.1)
    model = build_model(toy_cfg, lora, tiny_model_path, tokenizer, LABELS)
    inputs = sum(m.in_features for m in model.modules() if isinstance(m, LoraLayer))
    assert inputs > 0
    # each LoRA layer keeps its dropped input (fp32) and the mask (1 byte)
    assert dropped["activations"] - plain["activations"] == pytest.approx(5 * 128 * 8 * inputs)
