import dataclasses
import warnings
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel

from peft_sentiment import models
from peft_sentiment.variants import VARIANTS

LABELS = ["neg", "pos"]


def build(variant: str, cfg, model_path, tokenizer, labels=LABELS):
    """The declared variant's model, as the pipeline builds it."""
    return models.build_model(cfg, VARIANTS[variant], model_path, tokenizer, labels)


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_targets_every_projection_of_the_architecture_never_the_head(toy_cfg, tiny_model_path, tokenizer, lora_config):
    """peft's "all-linear" adapts exactly the attention and MLP projections, for GPT-2 and for Llama."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification

    assert lora_config.target_modules == "all-linear" and lora_config.fan_in_fan_out  # GPT-2's Conv1D is (in, out)
    gpt2 = build("lora", toy_cfg, tiny_model_path, tokenizer)
    assert models.adapted_module_names(gpt2) == ["c_attn", "c_proj", "c_fc"]
    llama = LlamaForSequenceClassification(
        LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                    vocab_size=64, pad_token_id=0)
    )  # fmt: skip
    llama = get_peft_model(llama, models.make_lora_config(toy_cfg, "llama"))
    assert models.adapted_module_names(llama) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    named = models.make_lora_config(dataclasses.replace(toy_cfg, lora_targets=("c_attn",)), "gpt2")  # narrowed
    assert named.target_modules == {"c_attn"}


# tiny-gpt2: 2 blocks of width 64. LoRA's "all-linear" adapts c_attn (64 -> 192), attn.c_proj (64 -> 64), c_fc
# (64 -> 256) and mlp.c_proj (256 -> 64) in each block: r * (in + out) trainable numbers per layer.
HEAD = 64 * 2  # score: width x classes, no bias
LORA_PER_RANK = 2 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a declared variant's model holds on tiny-gpt2; the tests below hold each variant's model to its row."""

    adapted_layers: int  # layers with LoRA's A and B beside them
    layers_4bit: int  # bitsandbytes 4-bit layers
    trainable: str  # "head", "head+lora" or "all": which parameters its optimizer updates


# One row per declared variant: a new variant gets every test of this matrix by adding its row.
EXPECTED = {
    "head_only": Expected(adapted_layers=0, layers_4bit=0, trainable="head"),
    "lora": Expected(adapted_layers=8, layers_4bit=0, trainable="head+lora"),
    "nf4_lora": Expected(adapted_layers=8, layers_4bit=8, trainable="head+lora"),
    "full_finetune": Expected(adapted_layers=0, layers_4bit=0, trainable="all"),
}


def head_weight(model) -> torch.Tensor:
    """The weight of the new classification head that trains (peft keeps it under modules_to_save)."""
    return next(p for n, p in model.named_parameters() if p.requires_grad and "score" in n and n.endswith("weight"))


def test_every_declared_variant_has_a_row_of_expectations():
    assert list(EXPECTED) == list(VARIANTS)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_recipe_builds_what_its_declaration_and_row_say(name, toy_cfg, tiny_model_path, tokenizer):
    """What reads a declaration without building it (saving, reloading, cost estimates) can trust it."""
    variant, expected = VARIANTS[name], EXPECTED[name]
    model = build(name, toy_cfg, tiny_model_path, tokenizer)
    assert isinstance(model, PeftModel) == (variant.trains == "adapter")
    assert len(models.layers_4bit(model)) == expected.layers_4bit and bool(expected.layers_4bit) == bool(variant.quantization)
    assert model.is_gradient_checkpointing == variant.gradient_checkpointing
    assert sum(n.endswith("lora_A") for n, _ in model.named_modules()) == expected.adapted_layers
    assert model.config.pad_token_id == tokenizer.pad_token_id
    trainable = trainable_names(model)
    is_trained = {"head": lambda n: "score." in n, "head+lora": lambda n: "lora_" in n or "score." in n, "all": lambda n: True}
    assert all(is_trained[expected.trainable](n) for n in trainable)  # nothing else trains
    assert any("score." in n for n in trainable)  # the new head always trains (peft saves it with the adapter)
    counts = models.count_parameters(model)
    lora = toy_cfg.lora_r * LORA_PER_RANK
    wanted = {"head": HEAD, "head+lora": HEAD + lora, "all": sum(p.numel() for p in model.parameters())}
    assert counts["trainable"] == wanted[expected.trainable]
    assert (counts["trainable"] == counts["total"]) == (expected.trainable == "all")
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in trainable)
    if isinstance(model, PeftModel):  # peft's SEQ_CLS default lists `classifier` too, a module these models lack
        assert model.peft_config["default"].modules_to_save == ["score"]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_variant_starts_from_the_same_head_whatever_ran_before(name, toy_cfg, tiny_model_path, tokenizer):
    """build_model seeds itself: the same start every time, and every variant's head starts where head-only's does."""
    cfg = dataclasses.replace(toy_cfg, seed=1)
    a = build(name, cfg, tiny_model_path, tokenizer)
    torch.manual_seed(123)  # whatever ran in between
    b = build(name, cfg, tiny_model_path, tokenizer)
    for (param, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), param
    assert torch.equal(head_weight(a), head_weight(build("head_only", cfg, tiny_model_path, tokenizer)))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_variant_classifies_into_the_class_names_it_is_given(name, toy_cfg, tiny_model_path, tokenizer):
    names = ["negative", "neutral", "positive"]
    with warnings.catch_warnings():  # the checkpoint holds no head (a language model's): any number of classes, quietly
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", ".*is deprecated and will be removed in v6", FutureWarning)  # peft reads one
        model = build(name, toy_cfg, tiny_model_path, tokenizer, labels=names)
    config = model.config
    assert config.num_labels == 3 and config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3)


def test_full_finetune_starts_from_the_very_weights_head_only_freezes(toy_cfg, tiny_model_path, tokenizer):
    full, head = (build(name, toy_cfg, tiny_model_path, tokenizer) for name in ("full_finetune", "head_only"))
    for (name, a), b in zip(full.named_parameters(), head.parameters(), strict=True):
        assert torch.equal(a, b), name  # only what trains differs


def test_nf4_stores_projections_as_4bit_codes_and_keeps_the_head(toy_cfg, tiny_model_path, tokenizer):
    model = build("nf4_lora", toy_cfg, tiny_model_path, tokenizer)
    layer = models.first_module_named(model, "c_attn").base_layer
    assert layer.weight.dtype == torch.uint8 and layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.numel() == 64 * 192 // 2  # two 4-bit codes per byte
    assert not isinstance(model.base_model.model.score.modules_to_save["default"], bnb.nn.Linear4bit)
    lora_only = build("lora", toy_cfg, tiny_model_path, tokenizer)
    assert model.get_memory_footprint() < lora_only.get_memory_footprint()


def test_nf4_stores_embeddings_in_bf16_and_computes_in_fp32(toy_cfg, tiny_model_path, tokenizer):
    model = build("nf4_lora", toy_cfg, tiny_model_path, tokenizer)
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(embeddings) == 2 and all(m.weight.dtype == torch.bfloat16 for m in embeddings)  # GPT-2: wte, wpe
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    ids = torch.tensor([[5, 6, 7, 8]])
    hidden = model.base_model.model.transformer(input_ids=ids).last_hidden_state
    assert hidden.dtype == torch.float32
    # the fp32 copy of the same model differs from it only by the rounding of the looked-up rows
    fp32 = models.load_classifier(tiny_model_path, tokenizer.pad_token_id, LABELS)
    saved = models.store_embeddings_16bit(fp32)
    assert saved == sum(m.weight.numel() * 2 for m in embeddings)
    assert fp32.transformer.wte(ids).dtype == torch.float32


def test_no_code_enables_remote_code_or_pickles():
    from pathlib import Path

    sources = [p.read_text() for p in Path(models.__file__).parent.rglob("*.py")]
    assert not any("trust_remote_code=True" in s for s in sources)
    assert not any("torch.load(" in s or "import pickle" in s for s in sources)


def test_gpt2_loads_with_the_fused_gelu_that_computes_the_same(tiny_model_path, tokenizer):
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.activations import GELUTanh, NewGELUActivation

    assert AutoConfig.from_pretrained(tiny_model_path).activation_function == "gelu_new"  # as gpt2's config says
    fused = models.load_classifier(tiny_model_path, tokenizer.pad_token_id, LABELS)
    assert all(isinstance(block.mlp.act, GELUTanh) for block in fused.transformer.h)
    assert fused.config.activation_function == "gelu_new"  # a saved model says what GPT-2 computes
    stock = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=2)
    stock.config.pad_token_id = tokenizer.pad_token_id
    stock.score.load_state_dict(fused.score.state_dict())  # the same new head
    assert isinstance(stock.transformer.h[0].mlp.act, NewGELUActivation)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, stock(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_loading_is_quiet_about_the_new_head_but_not_about_anything_else(tiny_model_path, tokenizer, tmp_path, caplog):
    import shutil

    from safetensors.torch import load_file, save_file

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the head is always new: no warning either
        models.load_classifier(tiny_model_path, tokenizer.pad_token_id, LABELS)
    assert "LOAD REPORT" not in caplog.text

    broken = tmp_path / "broken"  # a checkpoint that lost one block's weight (a cut-short download, say)
    shutil.copytree(tiny_model_path, broken)
    weights = load_file(Path(broken) / "model.safetensors")
    lost = next(k for k in weights if ".h.1." in k and k.endswith("ln_1.weight"))
    save_file({k: v for k, v in weights.items() if k != lost}, Path(broken) / "model.safetensors", metadata={"format": "pt"})
    models.load_classifier(str(broken), tokenizer.pad_token_id, LABELS)
    report = caplog.text
    assert "LOAD REPORT" in report and "h.1.ln_1.weight" in report and "MISSING" in report


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
def test_a_quantized_model_keeps_no_view_into_its_checkpoint_file(tiny_model_path, tokenizer, bnb_config):
    checkpoint = str(Path(tiny_model_path) / "model.safetensors")

    def views_into_checkpoint(tensors) -> list:
        ranges = []
        for line in Path("/proc/self/maps").read_text().splitlines():
            if line.endswith(checkpoint):
                start, end = line.split()[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
        return [t for t in tensors if any(a <= t.untyped_storage().data_ptr() < b for a, b in ranges)]

    fp32 = models.load_classifier(tiny_model_path, tokenizer.pad_token_id, LABELS)
    assert views_into_checkpoint(fp32.parameters())  # fp32 loads zero-copy from the file (the reason for the copy below)
    del fp32
    nf4 = models.load_classifier(tiny_model_path, tokenizer.pad_token_id, LABELS, bnb_config)
    assert not views_into_checkpoint([*nf4.parameters(), *nf4.buffers()])


def test_a_onednn_cap_keeps_bitsandbytes_packed_kernel_off(monkeypatch, tiny_model_path, tokenizer, bnb_config):
    """$ONEDNN_MAX_CPU_ISA=AVX2 takes the AVX2-only path for bitsandbytes too: no packed bf16 kernel, even when asked."""
    import bitsandbytes.functional

    from peft_sentiment import hardware

    monkeypatch.setattr(bitsandbytes.functional, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.delenv(hardware.ONEDNN_ISA_ENV, raising=False)  # also when the whole run is on the forced AVX2 path
    load = lambda: models.load_classifier(tiny_model_path, tokenizer.pad_token_id, ["neg", "pos"], bnb_config,  # noqa: E731
                                          cpu_inference_kernel=True)  # fmt: skip
    assert all(layer.support_avx512bf16_for_cpu for layer in models.layers_4bit(load()))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not any(layer.support_avx512bf16_for_cpu for layer in models.layers_4bit(load()))
