"""Results as data: provenance (versions, device), peak memory, JSON records written atomically and read back, atomic folders.

Training and inference import this module; the tables and plots drawn from records live in `report`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import psutil
import torch

from peft_sentiment.hardware import device_info, on_gpu

LIBRARIES = ("torch", "transformers", "datasets", "peft", "bitsandbytes", "accelerate", "evaluate", "scikit-learn")
# Keys every record has; tests and tables rely on them.
RECORD_KEYS = (
    "variant", "profile", "config", "model", "versions", "device", "params", "model_bytes", "metrics",
    "train_seconds", "eval_seconds", "train_tokens", "eval_tokens", "train_tokens_per_s", "eval_tokens_per_s",
    "peak_memory_bytes", "log_history", "predictions", "test_labels", "test_n_tokens", "created",
)  # fmt: skip
METRIC_KEYS = ("accuracy", "accuracy_ci95", "test_reviews")


def release_memory() -> None:
    """Collect garbage, and hand freed memory back (CUDA's cache; glibc's free lists, which otherwise keep what an earlier
    model or training freed, so that a later one's rise in RSS would look smaller than its need)."""
    import gc

    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()
    return_freed_memory()


def return_freed_memory() -> None:
    """Hand the pages glibc's malloc keeps on its free lists back to the OS (malloc_trim; Linux only)."""
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c")
    if libc and platform.system() == "Linux":
        with contextlib.suppress(OSError, AttributeError):  # musl has no malloc_trim
            ctypes.CDLL(libc).malloc_trim(0)


def training_memory_bytes(record: dict) -> int | None:
    """A variant's peak memory for training, alone: its weights (`model_bytes`) plus what training added over the memory
    before it (`train_memory_rise_bytes`); None for a record that did not measure the rise."""
    rise = record.get("train_memory_rise_bytes")
    return None if rise is None else record.get("model_bytes", 0) + rise


def provenance() -> dict:
    """What every record says of where and when it was made: the device, the libraries' versions, the time."""
    return {"device": device_info(), "versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def library_versions() -> dict[str, str]:
    """Installed versions of the stack, for the record."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@contextlib.contextmanager
def atomic_path(target):
    """A temporary path beside `target` to write a file or folder into; on success it replaces `target` by renames.

    A crash mid-write leaves `target` as it was (the old file or folder, or nothing): never half of either.
    The temporary name is per process, so that processes writing the same target (DDP ranks) never collide.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (target.with_name(f".{target.name}.{os.getpid()}.{kind}") for kind in ("tmp", "old"))
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    if tmp.is_dir() and target.is_dir():  # a folder cannot be renamed over another: set the old one aside first
        target.replace(old)
        tmp.replace(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(target)


def write_json_atomic(data, path) -> Path:
    """Write `data` as JSON to `path` (atomic: never a half-written file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=float))
    return Path(path)


def check_writable(*folders: str) -> None:
    """Raise before training when an output folder cannot be written (nothing is created or overwritten)."""
    for folder in folders:
        existing = Path(folder).resolve()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(f"Cannot write to {folder}: {existing} is a file, not a folder. Choose another folder.")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(
                f"Cannot write to {folder} ({existing} is not writable). Choose another folder in the parameters."
            )


def write_record(record: dict, records_dir: str) -> Path:
    """Save one variant's record as `<records_dir>/<variant>.json`."""
    check_record(record)
    return write_json_atomic(record, Path(records_dir) / f"{record['variant']}.json")


def check_record(record: dict) -> None:
    """Raise if `record` lacks a key the tables, plots or tests read."""
    missing = [k for k in RECORD_KEYS if k not in record] + [
        f"metrics.{k}" for k in METRIC_KEYS if k not in record.get("metrics", {})
    ]
    if missing:
        raise ValueError(f"Record {record.get('variant')!r} is missing {missing}: written by an older version? Run it again.")


def read_json(path) -> dict:
    """A JSON file the project wrote, or a ValueError naming the damaged file."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): it was cut short or edited. Restore it or run again.") from err


def recorded_test_split(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, predictions as recorded, token counts before truncation) of a record's test texts, in test order."""
    return np.asarray(record["test_labels"]), np.asarray(record["predictions"]), np.asarray(record["test_n_tokens"])


def read_records(records_dir: str, order=()) -> list[dict]:
    """Every record in `records_dir`, checked; those named in `order` first, in that order, then the rest by name."""
    records = sorted((read_json(p) for p in Path(records_dir).glob("*.json")), key=lambda r: r["variant"])
    for record in records:
        check_record(record)
    rank = {name: i for i, name in enumerate(order)}
    return sorted(records, key=lambda r: rank.get(r["variant"], len(rank)))


def write_baseline(baseline: dict, records_dir: str) -> Path:
    """Save a baseline's record beside the variants' (`<records_dir>/baselines/<variant>.json`)."""
    return write_json_atomic(baseline, Path(records_dir) / "baselines" / f"{baseline['variant']}.json")


def read_baselines(records_dir: str) -> list[dict]:
    """Baseline records (TF-IDF + LR) written beside the variants' records."""
    return [read_json(p) for p in sorted((Path(records_dir) / "baselines").glob("*.json"))]


# the whole run that wrote the records (bench/accuracy or the notebook): command, variants, wall time
ACCURACY_RUN_FILE = "benchmark/accuracy_run.json"


def write_run_summary(records_dir: str, command: str, variants, seconds: float, resumed: bool = False) -> Path:
    """Record the run that wrote `records_dir`'s records: its command, variants and whole wall time."""
    run = {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device_info(),
        "variants": list(variants),
        "resumed": resumed,
        "total_seconds": seconds,
    }
    return write_json_atomic(run, Path(records_dir) / ACCURACY_RUN_FILE)


NOTEBOOK_COMMAND_ENV = "PEFT_NOTEBOOK_COMMAND"  # set by bench/notebook.py


def notebook_command(profile: str) -> str:
    """How the notebook's records were produced: bench/notebook.py's command when it runs the notebook, else nbconvert."""
    return (
        os.environ.get(NOTEBOOK_COMMAND_ENV)
        or f"PEFT_PROFILE={profile} jupyter nbconvert --to notebook --execute project_peft.ipynb"
    )


class PeakMemory:
    """Peak memory inside a `with` block (CUDA allocator peak on a GPU, sampled process RSS on a CPU), and its seconds.

    The Trainer's own memory metrics are deltas since each stage began, so they leave out the weights
    loaded before `train()`: where NF4 saves memory. RSS includes them. `read`, a function returning
    bytes, is sampled instead, on any device (the tests give it their own values). `start_bytes` is the
    value on entry, which the peak includes.
    """

    def __init__(self, interval_s: float = 0.05, read=None):
        self.interval_s, self.read = interval_s, read
        self.start_bytes = self.peak_bytes = 0
        self.seconds = 0.0  # the block's wall time
        self._cuda = read is None and on_gpu()

    def __enter__(self):
        release_memory()  # what earlier work freed, returned first: the start is this block's own baseline
        self._start = time.perf_counter()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
            return self
        if self.read is None:
            process = psutil.Process()
            self.read = lambda: process.memory_info().rss
        self.start_bytes = self.peak_bytes = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, self.read())
            if self._stop.wait(self.interval_s):
                return

    @property
    def rise_bytes(self) -> int:
        """How far the peak rose above the memory on entry: what the block itself needed."""
        return max(0, self.peak_bytes - self.start_bytes)

    def describe(self) -> str:
        """What `rise_bytes` measures, for records."""
        if self._cuda:
            return "the CUDA allocator's peak during training over its allocation before it (torch.cuda.max_memory_allocated)"
        return (
            "the process's peak resident memory (RSS, sampled every 50 ms) during training over its RSS before it, freed "
            "memory returned to the OS first and after every training step (malloc_trim)"
        )

    def current_peak(self) -> int:
        """The peak so far, inside the block."""
        return torch.cuda.max_memory_allocated() if self._cuda else self.peak_bytes

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        if self._cuda:
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        return False
