"""What this machine can do fast, and the choices that follow: mixed precision and bitsandbytes' CPU kernels.

Libraries pick kernels by CPU feature: oneDNN runs bf16 matmuls about twice as fast as fp32 on CPUs
with AVX512-BF16 or AMX, and bitsandbytes packs 4-bit weights into a bf16 layout for inference on
them. Everything that depends on those features reads them here, so a test can force either answer.
"""

from __future__ import annotations

import logging
import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the instructions that make bf16 fast
REPORTED_FLAGS = ("avx2", "avx512f", *NATIVE_BF16_FLAGS)


@lru_cache(maxsize=1)
def cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in /proc/cpuinfo ("flags", "model name"), or None where Linux does not tell it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is not there)."""
    return frozenset((cpuinfo_field("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name where Linux tells it, else the architecture."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def on_gpu() -> bool:
    """True when a CUDA GPU is visible: the one place the package asks."""
    return torch.cuda.is_available()


def device_info() -> dict:
    """What ran the work, for records: GPU name and count, or CPU model, cores and the features that pick kernels."""
    if on_gpu():
        return {"type": "cuda", "name": torch.cuda.get_device_name(), "count": torch.cuda.device_count()}
    return {"type": "cpu", "name": cpu_name(), "cores": os.cpu_count(), "features": cpu_features()}


# oneDNN ISA caps below its first bf16 instructions: with $ONEDNN_MAX_CPU_ISA set to one of them, bf16 is emulated
# (converted to fp32 and back) even on a CPU that has AVX512-BF16: slower than fp32, and rounded differently.
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
# The AVX2-only path (most laptops) on any x86 CPU, for tests and benchmarks: oneDNN (bf16 matmuls), torch's own
# vectorized kernels and MKL (fp32 matmuls) each held to AVX2, each read when its library starts (a fresh process)
AVX2_ONLY_ENV = {ONEDNN_ISA_ENV: "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA GPUs with bf16 tensor cores (T4 and V100 emulate bf16)


def onednn_isa_cap() -> str | None:
    """$ONEDNN_MAX_CPU_ISA when it holds oneDNN below its bf16 kernels, else None."""
    cap = os.environ.get(ONEDNN_ISA_ENV, "").upper()
    return cap if cap in ONEDNN_ISAS_WITHOUT_BF16 else None


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matmul instructions (AVX512-BF16 or AMX) that oneDNN may use, where bf16 beats fp32."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS) and onednn_isa_cap() is None


def gpu_has_native_bf16() -> bool:
    """True on CUDA GPUs of compute capability 8.0 or more. Not `torch.cuda.is_bf16_supported()`: it answers True on
    a T4 or V100, which emulate bf16 (slowly) and compute fp16 fast."""
    return torch.cuda.get_device_capability() >= NATIVE_BF16_CAPABILITY


def resolve_precision(precision: str = "auto") -> str:
    """The precision a run computes in: `auto` is what the hardware computes natively: bf16 on GPUs of capability 8.0+
    and CPUs with AVX512-BF16 or AMX, fp16 on older CUDA GPUs, fp32 on other CPUs."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    if on_gpu():
        return "bf16" if gpu_has_native_bf16() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


COMPUTE_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_compute_dtype(dtype: str, precision: str) -> str:
    """A torch dtype name for NF4's de-quantized matmuls: `dtype` itself, or for "auto" the one `precision` resolves to."""
    return COMPUTE_DTYPES[resolve_precision(precision)] if dtype == "auto" else dtype


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device_type: str):
    """The autocast the Trainer computes a resolved `precision` under (weights stay fp32); no autocast for fp32.

    A model trained by the Trainer in bf16 keeps computing so (accelerate wraps its forward in place),
    so predictions made afterwards, or on a reloaded adapter, match its record only under the same autocast.
    """
    return torch.autocast(device_type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16), enabled=precision in AUTOCAST_DTYPES)


def describe_precision(precision: str) -> str:
    """One line saying what `precision` resolved to on this machine, and why."""
    chosen = resolve_precision(precision)
    if precision != "auto":
        return f"precision {chosen} (set in the config)"
    if on_gpu():
        capability = ".".join(map(str, torch.cuda.get_device_capability()))
        native = "computes bf16 natively" if chosen == "bf16" else "emulates bf16, computes fp16 natively"
        why = f"{torch.cuda.get_device_name()}, compute capability {capability}, {native}"
    else:
        present = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
        why = f"CPU with {', '.join(present)}" if present else f"CPU without {' or '.join(NATIVE_BF16_FLAGS)}"
        if present and onednn_isa_cap():
            why += f", but ${ONEDNN_ISA_ENV}={onednn_isa_cap()} holds oneDNN to kernels without bf16"
    return f"precision {chosen} (auto: {why})"


def cpu_features() -> dict[str, bool]:
    """The CPU features that change which kernels run here, for records."""
    flags = cpu_flags()
    return {flag: flag in flags for flag in REPORTED_FLAGS}


# oneDNN (torch's bf16 kernels on a CPU) caches its compiled kernels and their scratch buffers per input shape, 1,024
# of each by default. Batches padded to their own longest review bring a new shape nearly every step, so the cache
# grows for the whole of a training run: LoRA training steps on 80 lengths grew the RSS by 616 MB with the defaults
# and by 25 MB with 64, at no loss of speed (runs on 2 CPU cores with AVX512-BF16, 2026-12-07). One step's kernels fit
# in 64. Read when the first kernel is built, so set on import; a value the user set wins.
KERNEL_CACHE_LIMITS = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "64"}


def bound_kernel_caches() -> None:
    """Keep oneDNN's per-shape kernel caches (see KERNEL_CACHE_LIMITS) from growing with every new batch length."""
    for name, value in KERNEL_CACHE_LIMITS.items():
        os.environ.setdefault(name, value)


def quiet_bitsandbytes_kernel_hub() -> None:
    """Keep bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" out of the output.

    On CPUs with AVX512-BF16, importing bitsandbytes tries the `kernels` package, which downloads
    kernels from the Hub at run time; without it, bitsandbytes uses its own (bundled) kernel and
    logs a warning that asks the user to install `kernels`. This project installs nothing that
    fetches code at run time, so the warning is expected and says nothing a user must act on.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in record.getMessage())
