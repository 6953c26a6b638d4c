"""What the benchmarks share: each measurement in a fresh process of its own, and weights paged in before memory is read."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


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


def without_folders(command: str) -> str:
    """`command` with each absolute path cut to its last part: records name no machine's folders."""
    return re.sub(r"(?<![\w.~-])/(?:[^\s/]+/)+", "", command)


def what_else_ran(seconds: float = 1.0) -> dict:
    """Other processes busy on this machine (CPU % over `seconds`) and the load average: a benchmark's record says
    whether it had the cores to itself, instead of assuming it."""
    import os

    import psutil

    me = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    others = [p for p in psutil.process_iter(["name", "cmdline"]) if p.pid not in me]
    for p in others:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(seconds)
    busy = []
    for p in others:
        try:
            percent = p.cpu_percent(None)
        except psutil.Error:
            continue
        if percent >= 5:
            command = without_folders(" ".join(p.info["cmdline"] or [p.info["name"]]))
            busy.append({"pid": p.pid, "cpu_percent": percent, "command": command[:120]})
    return {"load_average_1_5_15": list(os.getloadavg()), "busy_processes": busy}


def git_head() -> str:
    """HEAD's short hash."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def git_changes(*paths: str, untracked: bool = True) -> str:
    """`git status --porcelain` for `paths` (the whole tree when none): empty when they are as HEAD has them."""
    flags = [] if untracked else ["--untracked-files=no"]
    cmd = ["git", "status", "--porcelain", *flags, "--", *paths]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stdout.strip()


def git_commit() -> str:
    """HEAD's short hash, with "+changes" when the working tree differs from it."""
    return git_head() + ("+changes" if git_changes(untracked=False) else "")
