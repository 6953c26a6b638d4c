"""Results as data: provenance (versions, device) and the JSON record of each run, written atomically and read back.

Training and inference import this module; the tables and plots drawn from records live in `report`.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from peft_sentiment.hardware import cpu_features, cpu_name

LIBRARIES = ("torch", "transformers", "datasets", "peft", "bitsandbytes", "accelerate", "evaluate", "scikit-learn")
# Keys every record has; tests and tables rely on them.
RECORD_KEYS = (
    "variant", "profile", "config", "model", "versions", "device", "params", "model_bytes", "metrics",
    "train_seconds", "eval_seconds", "train_tokens", "eval_tokens", "train_tokens_per_s", "eval_tokens_per_s",
    "peak_memory_bytes", "log_history", "predictions", "created",
)  # fmt: skip
METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "roc_auc", "accuracy_ci95", "test_reviews")
VARIANT_LABELS = {"head_only": "head-only", "lora": "LoRA", "nf4_lora": "NF4 LoRA"}


def library_versions() -> dict[str, str]:
    """Installed versions of the stack, for the record."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_info() -> dict:
    """What ran the work: GPU name, or CPU model and core count."""
    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(), "count": torch.cuda.device_count()}
    return {"type": "cpu", "name": cpu_name(), "cores": os.cpu_count(), "features": cpu_features()}


def write_json_atomic(data, path: Path) -> Path:
    """Write `data` as JSON to `path` via a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, default=float)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
        raise ValueError(f"Record is missing {missing}.")


def read_json(path) -> dict:
    """A JSON file the project wrote, or a ValueError naming the damaged file."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): it was cut short or edited. Restore it or run again.") from err


def read_records(records_dir: str) -> list[dict]:
    """Every record in `records_dir`, in variant order."""
    order = list(VARIANT_LABELS)
    records = [read_json(p) for p in Path(records_dir).glob("*.json")]
    for record in records:
        check_record(record)
    return sorted(records, key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order))


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
