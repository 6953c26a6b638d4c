"""Execute the notebook top to bottom on a profile and commit-ready stamp it with how it was run.

    python bench/notebook.py --profile cpu     # under 2 hours on 2 CPU cores with native bf16; rewrites project_peft.ipynb

The executed copy replaces `project_peft.ipynb` only when every cell ran without error; its first
cell then says which profile, date, machine, commit and wall time produced the outputs below it.
A failed run is kept as runs/notebook-<profile>-failed.ipynb and the committed notebook is untouched.
It refuses to start (exit code 2) while peft_sentiment/ or bench/ differ from HEAD, since the stamp would
then name a commit whose code did not run; --allow-dirty runs anyway and the stamp says so.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil
from harness import git_changes, git_head
from nbclient import NotebookClient

from peft_sentiment import hardware, recording

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "project_peft.ipynb"
STAMP_TAG = "run-stamp"  # the stamp cell's tag: re-running replaces it instead of stacking stamps
CODE = ("peft_sentiment", "bench")  # the code a stamp's commit vouches for (the notebook carries its own source)
TEXT_KEYS = ("text/plain", "text/markdown", "text/html")  # rich outputs whose text may name files


def stamp_cell(
    profile: str, started: float, seconds: float, command: str, commit: str, changed: bool = False
) -> nbformat.NotebookNode:
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
        f"commit `{commit}`{' + uncommitted changes' if changed else ''}. Command: `{command}`. "
        "To run it yourself, see the README's quick start."
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


PROGRESS_LINE = re.compile(r"^.*\d+%\|.*\|.*$")  # tqdm's text bar: "desc:  40%|####      | 2/5 [00:01<00:02, ...]"


def strip_progress(nb: nbformat.NotebookNode) -> None:
    """Progress bars out of the saved outputs: tqdm's text lines and the Trainer's HTML bars (its notebook callback),
    and the empty placeholders they leave.

    They help whoever watches a run; in the saved file they are noise, and the Trainer's carries a table of
    every logged value at six decimals. The run's numbers are in its records and in the cells' own lines.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.outputs:
            if out.output_type == "stream":
                out.text = "\n".join(line for line in out.text.split("\n") if not PROGRESS_LINE.match(line))
                if not out.text.strip():
                    continue
            elif "text/html" in out.get("data", {}) and (
                "<progress" in out.data["text/html"] or not out.data["text/html"].strip()
            ):
                continue  # a bar, or the empty placeholder a finished one leaves
            kept.append(out)
        cell.outputs = kept


def scrub_paths(nb: nbformat.NotebookNode, root: Path = ROOT) -> None:
    """Output text without this machine's paths: the repository as `.`, installed packages as `<site-packages>/`,
    the kernel's cell files as `<cell>`, the home folder as `~`.

    Warnings name the file that raised them (peft's, in a virtualenv): a reader's machine has other paths,
    and the committed notebook should not publish a developer's.
    """
    rules = [  # most specific first: the virtualenv and the kernel's files may sit inside the repository or home
        (r"[^\s'\"(]*[/\\]site-packages[/\\]", "<site-packages>/"),
        (re.escape(tempfile.gettempdir()) + r"/ipykernel_\d+/\d+\.py", "<cell>"),
        (re.escape(str(root)) + r"(?![\w-])", "."),
    ]
    if Path.home() != Path("/"):  # a container's home may be the root folder itself
        rules.append((re.escape(str(Path.home())) + r"(?![\w-])", "~"))

    def scrub(text: str) -> str:
        for pattern, replacement in rules:
            text = re.sub(pattern, replacement, text)
        return text

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out.text = scrub(out.text)
            for key in (k for k in TEXT_KEYS if k in out.get("data", {})):
                out.data[key] = scrub(out.data[key])
            if "traceback" in out:
                out.evalue, out.traceback = scrub(out.evalue), [scrub(line) for line in out.traceback]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help="profile to execute (default: cpu)")
    parser.add_argument("--allow-dirty", action="store_true", help="run with uncommitted code; the stamp says so")
    args = parser.parse_args(argv)
    command = "python bench/notebook.py --profile " + args.profile
    commit, changes = git_head(), git_changes(*CODE)  # the code that runs, whatever is committed meanwhile
    if changes and not args.allow_dirty:
        print(
            f"Uncommitted changes in {' and '.join(CODE)}:\n{changes}\nThe stamp would name commit {commit}, whose code "
            "did not run: commit them first, or pass --allow-dirty for an experiment.",
            file=sys.stderr,
        )
        return 2

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = [c for c in nb.cells if STAMP_TAG not in c.metadata.get("tags", [])]
    os.environ["PEFT_PROFILE"] = args.profile  # the kernel inherits it; the parameters cell reads it
    os.environ[recording.NOTEBOOK_COMMAND_ENV] = command  # what the notebook's records name as their command
    client = NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    started = time.time()
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
    strip_progress(nb)
    scrub_paths(nb)
    nb.cells.insert(0, stamp_cell(args.profile, started, seconds, command, commit, changed=bool(changes)))
    tmp = NOTEBOOK.with_name(f".{NOTEBOOK.name}.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(NOTEBOOK)  # atomic: a crash here never leaves half a notebook
    print(f"{NOTEBOOK.name}: executed on profile {args.profile} in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
