"""Precision and kernel choices follow the CPU's features; each branch is forced, whatever this machine has."""

import logging

import pytest
import torch

from peft_sentiment import hardware
from peft_sentiment.config import make_config
from peft_sentiment.train import make_training_args
from peft_sentiment.variants import VARIANTS


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend this machine's CPU (no GPU) has exactly the given /proc/cpuinfo flags."""

    def pretend(*flags):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))

    return pretend


@pytest.mark.parametrize(
    "flags, expected",
    [(("avx2", "avx512f"), "fp32"), (("avx512f", "avx512_bf16"), "bf16"), (("amx_bf16",), "bf16"), ((), "fp32")],
)
def test_auto_precision_is_bf16_only_on_cpus_that_compute_it_natively(cpu_with, flags, expected):
    cpu_with(*flags)
    assert hardware.resolve_precision("auto") == expected
    assert expected in hardware.describe_precision("auto")
    args = make_training_args(make_config("smoke", work_dir="runs/test-precision"), VARIANTS["lora"])
    assert (args.bf16, args.fp16) == (expected == "bf16", False)


def test_auto_precision_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "a GPU")
    for supported, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert hardware.resolve_precision("auto") == expected


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_computes_matmuls_in_the_resolved_precision(precision, dtype):
    layer = torch.nn.Linear(4, 4)
    with hardware.autocast(precision, "cpu"):
        assert layer(torch.ones(1, 4)).dtype == dtype
    assert layer.weight.dtype == torch.float32  # mixed precision: the weights themselves stay fp32


def test_an_explicit_precision_is_kept_and_a_bad_one_named(cpu_with):
    cpu_with("avx512_bf16")
    assert hardware.resolve_precision("fp32") == "fp32" and "set in the config" in hardware.describe_precision("fp32")
    with pytest.raises(ValueError, match="choose one of auto, fp32, bf16, fp16"):
        make_config("smoke", precision="half")


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    features = hardware.cpu_features()
    assert set(features) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"} and all(isinstance(v, bool) for v in features.values())


def test_bitsandbytes_kernel_hub_warning_never_reaches_the_user(caplog):
    import peft_sentiment  # noqa: F401  (installs the filter)

    with caplog.at_level(logging.WARNING):
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already `pip install kernels`",
            "No module named 'kernels'",
        )
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
