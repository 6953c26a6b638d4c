"""Precision and kernel choices follow the CPU's features; each branch is forced, whatever this machine has."""

import dataclasses
import logging
import os
import subprocess
import sys

import pytest
import torch

from peft_sentiment import hardware
from peft_sentiment.config import make_config
from peft_sentiment.models import make_nf4_config
from peft_sentiment.train import make_training_args
from peft_sentiment.variants import VARIANTS


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend this machine's CPU (no GPU) has exactly the given /proc/cpuinfo flags."""

    def pretend(*flags):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.delenv(hardware.ONEDNN_ISA_ENV, raising=False)  # a run on the forced AVX2 path pretends too

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


# torch.cuda.is_bf16_supported() answers True on both (a T4 emulates bf16): only the capability tells them apart
GPUS = {"Tesla T4": ((7, 5), "fp16", torch.float16), "NVIDIA A100-SXM4-40GB": ((8, 0), "bf16", torch.bfloat16)}


@pytest.fixture
def gpu_like(monkeypatch):
    """Pretend a CUDA GPU of this name and compute capability is visible (no test needs a real one)."""

    def pretend(name, capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "set_device", lambda *_: None)  # TrainingArguments selects cuda:0

    return pretend


@pytest.mark.parametrize("gpu", GPUS)
def test_auto_precision_on_gpus_is_what_they_compute_natively(gpu_like, gpu, monkeypatch):
    capability, precision, dtype = GPUS[gpu]
    gpu_like(gpu, capability)
    assert hardware.resolve_precision("auto") == precision
    assert gpu in hardware.describe_precision("auto") and precision in hardware.describe_precision("auto")
    cfg = make_config("full", work_dir="runs/test-precision")
    assert make_nf4_config(cfg).bnb_4bit_compute_dtype == dtype  # NF4's matmuls follow the precision
    assert make_nf4_config(dataclasses.replace(cfg, nf4_compute_dtype="float32")).bnb_4bit_compute_dtype == torch.float32
    # TrainingArguments checks bf16 against the CUDA build it runs on (a CPU build here): told the pretend GPU has it
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda *_: True)
    args = make_training_args(cfg, VARIANTS["nf4_lora"])
    assert (args.bf16, args.fp16) == (precision == "bf16", precision == "fp16")


def test_a_onednn_cap_below_bf16_makes_auto_fp32(cpu_with, monkeypatch):
    """$ONEDNN_MAX_CPU_ISA=AVX2 (how the tests take the AVX2-only path on any CPU) emulates bf16: auto is fp32."""
    cpu_with("avx2", "avx512f", "avx512_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.resolve_precision("auto") == "fp32"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in hardware.describe_precision("auto")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert hardware.resolve_precision("auto") == "bf16"


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


def test_importing_the_package_bounds_the_kernel_caches_unless_the_user_set_them():
    show = "import os, peft_sentiment; print(*(os.environ[name] for name in peft_sentiment.hardware.KERNEL_CACHE_LIMITS))"
    env = {k: v for k, v in os.environ.items() if k not in hardware.KERNEL_CACHE_LIMITS}

    def shown(extra: dict) -> str:
        return subprocess.run([sys.executable, "-c", show], env=env | extra, capture_output=True, text=True, check=True).stdout

    assert shown({}).split() == list(hardware.KERNEL_CACHE_LIMITS.values())
    assert shown({"LRU_CACHE_CAPACITY": "8"}).split() == ["64", "8"]  # the user's own setting wins
