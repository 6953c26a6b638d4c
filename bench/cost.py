"""What a step costs: FLOPs counted from the model's shapes, and the machine's matmul peak, for MFU.

Counting convention (the usual one, e.g. PaLM's appendix): a matmul of an (m x k) by a (k x n) matrix
costs 2mkn FLOPs. Per token, the forward pass costs 2 FLOPs per weight of every linear layer
(embeddings are lookups: free), plus attention's two (s x s) products, 4 * s * hidden per layer for a
sequence of s tokens (counted in full, as the kernels here compute them, causal mask or not).
The backward pass costs what the variant really computes: 2 FLOPs per weight for the gradient of
a layer's input (only when something below it trains), 2 more for its weight gradient (only when
the weight trains), and twice attention's forward. Gradient checkpointing adds one more forward
(hardware FLOPs, not model FLOPs: MFU counts the model's work, not the recomputation).
`tests/test_bench_cost.py` checks these counts against torch's own FlopCounterMode.
"""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import numpy as np
import torch

MATMUL_LAYERS = ("Linear", "Conv1D", "Linear4bit")  # torch, GPT-2's (in, out) Linear, bitsandbytes NF4


def matmul_params(model) -> dict[str, int]:
    """Weights of the linear layers, split into frozen and trained (4-bit weights count as what they stand for).

    `below_head` counts trained weights other than the classification head: when there are none,
    the backward pass stops at the head (head-only), otherwise it runs through every layer (LoRA, full fine-tuning).
    """
    counts = {"frozen": 0, "trained": 0, "below_head": 0}
    for name, module in model.named_modules():
        if type(module).__name__ not in MATMUL_LAYERS or hasattr(module, "base_layer") or "original_module" in name:
            continue  # peft wrappers (base layer and lora_A/B count on their own) and the head's unused frozen copy
        weight = module.weight
        n = module.in_features * module.out_features if hasattr(module, "in_features") else weight.numel()
        if weight.requires_grad:
            counts["trained"] += n
            if "score" not in name.split("."):
                counts["below_head"] += n
        else:
            counts["frozen"] += n
    return counts


def attention_shape(model) -> tuple[int, int]:
    """(layers, hidden size) of a decoder; attention's products scale with both."""
    config = model.config
    return config.num_hidden_layers, config.hidden_size


def forward_flops(params: dict, layers: int, hidden: int, lengths) -> float:
    """FLOPs of one forward pass over sequences of `lengths` tokens."""
    lengths = np.asarray(lengths, dtype=np.float64)
    linear = 2 * (params["frozen"] + params["trained"]) * lengths.sum()
    return float(linear + attention_flops(layers, hidden, lengths))


def attention_flops(layers: int, hidden: int, lengths) -> float:
    """Q @ K^T and weights @ V in every layer: 2 * s * s * hidden each, per sequence of s tokens."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(4 * layers * hidden * (lengths**2).sum())


def training_flops(params: dict, layers: int, hidden: int, lengths, recompute: bool = False) -> float:
    """FLOPs of one training step (forward and backward) over sequences of `lengths` tokens.

    `recompute`: gradient checkpointing runs the forward pass twice (hardware FLOPs).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    tokens = lengths.sum()
    forward = forward_flops(params, layers, hidden, lengths)
    weight_grads = 2 * params["trained"] * tokens
    if params["below_head"]:  # gradients flow through every layer to reach the adapters
        input_grads = 2 * (params["frozen"] + params["trained"]) * tokens + 2 * attention_flops(layers, hidden, lengths)
    else:
        input_grads = 0.0
    return float(forward * (2 if recompute else 1) + weight_grads + input_grads)


def measure_matmul_peak(n: int = 2048, repeats: int = 10, dtype=torch.float32, device: str | None = None) -> float:
    """The best FLOP/s of an n x n matmul on this machine: the denominator of MFU, measured, not a datasheet's."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # the first calls warm caches and thread pools
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# ----------------------------------------------------------------------------------------------
# Will it fit? Memory of a training run, estimated before loading anything.

NF4_BYTES_PER_WEIGHT = 0.5 + (1 + 4 / 256) / 64  # two codes per byte; an 8-bit scale per 64, an fp32 one per 256 scales


def estimate_training_memory(
    config,
    variant,
    batch: int,
    seq_len: int,
    lora_r: int = 8,
    lora_targets=None,
    checkpointing: bool | None = None,
    lora_dropout: float = 0.0,
) -> dict[str, float]:
    """Bytes a training step needs, by part: weights, trainable parameters, gradients, AdamW state, activations.

    `variant` is a `variants.Variant`: what it trains (the head, adapters, every weight), whether its base
    is quantized (NF4) and checkpointed. Adapters are counted as LoRA's with `lora_r`, `lora_targets`
    and `lora_dropout`. `config` is the model's `AutoConfig`: the model is built on the meta device (no
    memory) to count its parameters. Activations follow Korthikanti et al. (2022), "Reducing Activation Recomputation
    in Large Transformer Models": per layer 34*s*b*h + 5*a*s^2*b bytes with 16-bit activations and
    1-byte dropout masks, i.e. 66*s*b*h + 9*a*s^2*b in fp32 (masks stay 1 byte). Gradient
    checkpointing keeps each layer's input (4*s*b*h) and one layer's activations at a time.
    Head-only keeps none: nothing below the head needs a gradient. `checkpointing` None = the
    variant's declaration (NF4 LoRA on, the others off). With `lora_dropout` > 0 every LoRA layer also
    keeps a dropped copy of its input (fp32) and the mask (1 byte): 5*s*b bytes per input feature.
    """
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForSequenceClassification

    from peft_sentiment.models import make_lora_config

    config = copy.deepcopy(config)
    config.num_labels = 2
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    counts = matmul_params(model)
    linear = counts["frozen"] + counts["trained"]
    head = model.score.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    other = total - embeddings - linear  # norms and biases
    if variant.trains == "head":
        trainable = head
    elif variant.trains == "all":
        trainable = total
    else:
        # alpha does not change a count; the dropout's memory is added below
        lora = SimpleNamespace(lora_r=lora_r, lora_alpha=16, lora_dropout=lora_dropout, lora_targets=lora_targets)
        peft_model = get_peft_model(model, make_lora_config(lora, config.model_type))
        trainable = peft_model.get_nb_trainable_parameters()[0]
        lora_inputs = sum(m.in_features for m in peft_model.modules() if isinstance(m, LoraLayer))
    # NF4: 4-bit linear layers, bf16 embeddings (store_embeddings_16bit), fp32 norms, biases and head
    nf4 = NF4_BYTES_PER_WEIGHT * (linear - head) + 2 * embeddings + 4 * (other + head)
    weights = nf4 if variant.quantization else 4 * total
    if variant.trains == "adapter":
        weights += 4 * (trainable - head)  # the LoRA matrices, in fp32
    layers, hidden = config.num_hidden_layers, config.hidden_size
    heads = config.num_attention_heads
    s, b = seq_len, batch
    per_layer = 66 * s * b * hidden + 9 * heads * s * s * b
    if variant.trains == "adapter" and lora_dropout > 0:
        per_layer += 5 * s * b * lora_inputs / layers
    if checkpointing is None:
        checkpointing = variant.gradient_checkpointing
    if variant.trains == "head":
        activations = 4 * (2 * s * b * hidden + heads * s * s * b)  # one layer's transient tensors, nothing kept
    elif checkpointing:
        activations = layers * 4 * s * b * hidden + per_layer
    else:
        activations = layers * per_layer
    parts = {
        "weights": float(weights),
        "gradients": 4.0 * trainable,
        "optimizer": 8.0 * trainable,  # AdamW: two fp32 moments per trained weight
        "activations": float(activations),
    }
    return parts | {"total": sum(parts.values()), "trainable_params": trainable, "params": total}
