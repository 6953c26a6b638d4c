"""The notebook: committed clean, and runs top to bottom on the smoke profile."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from peft_sentiment import recording

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "project_peft.ipynb"
SHARED_IMDB = ROOT.parent / "shared" / "data" / "imdb"


def test_committed_notebook_is_clean_or_one_stamped_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "PROFILE = None" in tagged[0].source  # None: PEFT_PROFILE, else full (config.resolve_profile)
    if all(not c.outputs and c.execution_count is None for c in code):
        return  # clean
    # Outputs must be those of one top-to-bottom run (bench/notebook.py), said so in the first cell.
    first = nb.cells[0]
    assert "run-stamp" in first.metadata.get("tags", []) and "profile `" in first.source and "started 20" in first.source
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "every cell once, in order"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


@pytest.mark.slow
def test_notebook_runs_headless_on_smoke(tmp_path):
    data_dir = os.environ.get("IMDB_DATA_DIR") or (str(SHARED_IMDB) if SHARED_IMDB.is_dir() else None)
    if data_dir is None:
        pytest.skip("needs IMDB parquet files: set IMDB_DATA_DIR")
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)  # the committed file is never rewritten
    env = {**os.environ, "PEFT_PROFILE": "smoke", "IMDB_DATA_DIR": str(Path(data_dir).resolve()), "MPLBACKEND": "Agg"}
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "--output",
        "executed.ipynb",
        NOTEBOOK.name,
    ]
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, timeout=900)

    records = recording.read_records(tmp_path / "runs/smoke/records")
    assert [r["variant"] for r in records] == ["head_only", "lora", "nf4_lora"]
    for r in records:
        assert r["profile"] == "smoke" and r["metrics"]["test_reviews"] == 128
        assert 0 <= r["metrics"]["accuracy"] <= 1 and 0 <= r["metrics"]["roc_auc"] <= 1
    for name in ("saved_f32_lora", "saved_nf4_lora"):
        assert (tmp_path / "runs/smoke" / name / "adapter_model.safetensors").is_file()
        assert not (tmp_path / name).exists(), "smoke must not write the committed adapter folders"
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
