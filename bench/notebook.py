"""Execute the notebook top to bottom on a profile and commit-ready stamp it with how it was run.

    python bench/notebook.py --profile cpu     # 116 min on 2 CPU cores (three variants, fp32); rewrites project_peft.ipynb

The executed copy replaces `project_peft.ipynb` only when every cell ran without error; its first
cell then says which profile, date, machine, commit and wall time produced the outputs below it.
A failed run is kept as runs/notebook-<profile>-failed.ipynb and the committed notebook is untouched.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
import psutil
from harness import git_commit
from nbclient import NotebookClient

from peft_sentiment import hardware, recording

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "project_peft.ipynb"
STAMP_TAG = "run-stamp"  # the stamp cell's tag: re-running replaces it instead of stacking stamps


def stamp_cell(profile: str, started: float, seconds: float, command: str, commit: str) -> nbformat.NotebookNode:
    """A markdown cell saying how the outputs below were produced."""
    device = hardware.device_info()
    machine = device["name"] + (
        f", {device['cores']} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB" if device["type"] == "cpu" else ""
    )
    versions = recording.library_versions()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    text = (
        f"> **The outputs below come from one top-to-bottom run**: profile `{profile}`, started {when}, "
        f"{seconds / 60:.0f} min wall time, on {machine} "
        f"(torch {versions['torch']}, transformers {versions['transformers']}, peft {versions['peft']}), "
        f"commit `{commit}`. Command: `{command}`. To run it yourself, see the README's quick start."
    )
    return nbformat.v4.new_markdown_cell(text, metadata={"tags": [STAMP_TAG]})


def tidy_streams(nb: nbformat.NotebookNode) -> None:
    """Each cell's consecutive stream outputs as one, and each line as a terminal shows it after its last \\r.

    Text progress bars redraw their line with \\r: Jupyter shows only the last state, but the saved text
    holds every state, which GitHub and nbconvert render one after another.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.outputs:
            if out.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == out.name:
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in out.text.split("\n"))
        cell.outputs = merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="profile to execute (default: cpu)")
    args = parser.parse_args(argv)
    command = "python bench/notebook.py --profile " + args.profile

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = [c for c in nb.cells if STAMP_TAG not in c.metadata.get("tags", [])]
    os.environ["PEFT_PROFILE"] = args.profile  # the kernel inherits it; the parameters cell reads it
    os.environ[recording.NOTEBOOK_COMMAND_ENV] = command  # what the notebook's records name as their command
    client = NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    started, commit = time.time(), git_commit()  # the code that runs, whatever is committed meanwhile
    code_cells = sum(c.cell_type == "code" for c in nb.cells)

    def progress(cell, cell_index, **_):
        if cell.cell_type == "code":
            print(f"[{(time.time() - started) / 60:6.1f} min] cell {cell_index} done ({code_cells} code cells)", flush=True)

    client.on_cell_executed = progress
    try:
        client.execute()
    except Exception:
        failed = ROOT / "runs" / f"notebook-{args.profile}-failed.ipynb"
        failed.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, failed)
        print(f"The run failed; its partial outputs are in {failed}. {NOTEBOOK.name} is unchanged.", file=sys.stderr)
        raise
    seconds = time.time() - started
    tidy_streams(nb)
    nb.cells.insert(0, stamp_cell(args.profile, started, seconds, command, commit))
    tmp = NOTEBOOK.with_name(f".{NOTEBOOK.name}.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(NOTEBOOK)  # atomic: a crash here never leaves half a notebook
    print(f"{NOTEBOOK.name}: executed on profile {args.profile} in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
