"""The notebook: committed clean, and runs top to bottom on the smoke profile."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from peft_sentiment import recording, report
from peft_sentiment.config import make_config
from peft_sentiment.pipeline import run_training
from peft_sentiment.variants import VARIANTS

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


def output_texts(nb) -> list[str]:
    """Every code cell's output as text: streams, plain text and markdown."""
    texts = []
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        for out in cell.outputs:
            if out.output_type == "stream":
                texts.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                texts += [out.data[k] for k in ("text/markdown", "text/plain") if k in out.data]
    return texts


def test_committed_notebook_shows_the_committed_records():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if not any(c.outputs for c in nb.cells if c.cell_type == "code"):
        pytest.skip("the committed notebook is clean")
    profile = re.search(r"profile `(\w+)`", nb.cells[0].source).group(1)
    records_dir = ROOT / make_config(profile).records_dir
    records = recording.read_records(records_dir, order=VARIANTS)
    texts = output_texts(nb)
    joined = "\n".join(texts)
    assert {r["command"] for r in records} == {f"python bench/notebook.py --profile {profile}"}, "the notebook's run wrote them"
    for r in records:
        low, high = r["metrics"]["accuracy_ci95"]
        assert f"{r['variant']}: test accuracy {r['metrics']['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f})" in joined
    # the conclusions drawn from the committed records are the ones the notebook shows, to the character
    assert report.summarize_results(records, recording.read_baselines(records_dir)) in texts


def test_committed_notebook_has_no_load_reports_widgets_or_raw_terminal_codes():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    stderr = "".join(o.text for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr")
    assert "LOAD REPORT" not in stderr and "MISSING" not in stderr
    assert "\x1b[" not in "".join(output_texts(nb)), "ANSI colour codes read as noise outside a terminal"
    assert not [o for c in code for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert "\r" not in stderr, "progress bars are saved as their final line (bench/notebook.tidy_streams)"


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

    records = recording.read_records(tmp_path / "runs/smoke/records", order=VARIANTS)
    assert [r["variant"] for r in records] == list(VARIANTS)  # every declared variant, full fine-tuning included
    for r in records:
        assert r["profile"] == "smoke" and r["metrics"]["test_reviews"] == 128
        assert 0 <= r["metrics"]["accuracy"] <= 1 and 0 <= r["metrics"]["roc_auc"] <= 1
    for name, weights in (
        ("saved_f32_lora", "adapter_model"),
        ("saved_nf4_lora", "adapter_model"),
        ("saved_full_finetune", "model"),
    ):
        assert (tmp_path / "runs/smoke" / name / f"{weights}.safetensors").is_file()
        assert not (tmp_path / name).exists(), "smoke must not write the committed folders"
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert "LOAD REPORT" not in "".join(output_texts(executed))

    # The models the notebook builds in view are the package's: its pipeline predicts the same on every review.
    out = tmp_path / "package"
    cfg = make_config("smoke", data_dir=env["IMDB_DATA_DIR"], records_dir=str(out / "records"), work_dir=str(out / "work"),
                      save_dir=str(out))  # fmt: skip
    for notebook_record, package_record in zip(records, run_training(cfg), strict=True):
        assert notebook_record["variant"] == package_record["variant"]
        assert notebook_record["predictions"] == pytest.approx(package_record["predictions"], abs=1e-6)
