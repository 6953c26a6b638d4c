"""What the benchmarks share: each measurement in a fresh process of its own, and weights paged in before memory is read."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def run_in_worker(script: str, argv: list[str], worker_args: list[str], env: dict | None = None) -> dict:
    """Run `script *argv --worker *worker_args OUT` in a fresh Python process; return the JSON it wrote to OUT.

    A process of its own gives each measurement its own peak memory and a cold start, as a user's run has.
    """
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, script, *argv, "--worker", *worker_args, out.name], check=True, env=env)
        return json.loads(Path(out.name).read_text())


def page_in_weights(model) -> None:
    """Read every weight once, so that a memory measurement taken next counts them as already loaded.

    Weights loaded from safetensors may still be file-mapped pages that enter the process RSS only
    when first touched (+495 MB for GPT-2 124M): unread, a training step would count them as its own memory.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.float().sum() if tensor.is_floating_point() else tensor.sum()
