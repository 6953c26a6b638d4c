"""The notebook: committed clean, and runs top to bottom on the smoke profile."""

import getpass
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from conftest import load_bench
from nbformat.v4 import new_code_cell, new_notebook, new_output

from peft_sentiment import models, recording, report, train
from peft_sentiment.config import make_config
from peft_sentiment.experiment import run_training
from peft_sentiment.variants import VARIANTS, label_of

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "project_peft.ipynb"
SHARED_IMDB = ROOT.parent / "shared" / "data" / "imdb"
RECIPE_PARTS = (models.make_lora_config, models.make_nf4_config, models.build_nf4_lora, models.build_lora,
                train.make_training_args, train.make_trainer)  # what the notebook's recipe cells show  # fmt: skip


def test_committed_notebook_is_clean_or_one_stamped_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert (
        len(tagged) == 1 and "PROFILE = None" in tagged[0].source
    )  # None: PEFT_PROFILE, else full or quick (config.resolve_profile)
    if all(not c.outputs and c.execution_count is None for c in code):
        return  # clean
    # Outputs must be those of one top-to-bottom run (bench/notebook.py), said so in the first cell.
    first = nb.cells[0]
    assert "run-stamp" in first.metadata.get("tags", []) and "profile `" in first.source and "started 20" in first.source
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "every cell once, in order"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


SECTIONS = ["Setup", "Load and tokenize IMDB", "Metrics", "The untrained classifier", "The models",
            "What LoRA and NF4 change inside", "Training and evaluation", "Comparison", "Save and reload", "Conclusions",
            "Your own data", "Exercises"]  # fmt: skip


def test_the_notebook_reads_as_a_lesson_in_the_tutorials_order():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown" and "run-stamp" not in c.metadata.get("tags", [])]
    words = [len(text.split()) for text in markdown]
    assert sum(words) <= 2200 and max(words) <= 150, f"{sum(words)} words of Markdown, the longest cell {max(words)}"
    headings = [m.group(1) for text in markdown for m in re.finditer(r"^## \d+\. (.+)$", text, re.M)]
    assert headings == SECTIONS
    intro = markdown[0]
    assert len(intro.split()) <= 200 and all(section.lower() in intro.lower() for section in ("setup", "metrics", "exercises"))


def test_each_variants_recipe_is_shown_as_the_code_that_runs():
    """One cell per variant shows its recipe (the Hugging Face calls, copyable); the training loop runs the same."""
    code = "\n".join(c.source for c in nb_cells("code"))
    for variant in VARIANTS.values():
        assert f"models.{variant.build.__name__}" in code and "lesson.show_source(" in code, variant.name
        source = inspect.getsource(variant.build)
        assert len(source.splitlines()) <= 16, f"{variant.build.__name__}: a recipe a learner can read in one look"
        assert "from_pretrained(" in source
    assert "models.build_model(cfg, variant," in code  # the loop builds each variant through its recipe
    for call in ("BitsAndBytesConfig(", "LoraConfig(", "get_peft_model(", "prepare_model_for_kbit_training(",
                 "TrainingArguments(", "Trainer("):  # fmt: skip
        assert any(call in inspect.getsource(f) for f in RECIPE_PARTS), call


def nb_cells(kind: str) -> list:
    return [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == kind]


def test_committed_notebook_outputs_read_as_a_person_reads_them():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if not has_outputs(nb):
        pytest.skip("the committed notebook is clean")
    check_outputs_readable(nb, images=7)


def check_outputs_readable(nb, images: int) -> None:
    """At least `images` figures; no progress bar or empty placeholder; no text line wider than 100 characters."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= images
    progress = load_bench("notebook").PROGRESS_LINE
    texts = [o.text for o in outputs if o.output_type == "stream"]
    texts += [o.data["text/plain"] for o in outputs if set(o.get("data", {})) == {"text/plain"}]  # no richer form shown
    assert not [line for t in texts for line in t.splitlines() if progress.match(line)]
    assert not [o for o in outputs if "text/html" in o.get("data", {}) and ("<progress" in o.data["text/html"]
                                                                           or not o.data["text/html"].strip())]  # fmt: skip
    wide = [line for t in texts for line in t.splitlines() if len(line) > 100]
    assert not wide, wide[:3]


def test_committed_notebook_cells_have_ids():
    # nbformat 4.5 requires them; without, every run warns "Cell is missing an id field" before its first output
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    assert [i for i, c in enumerate(cells) if "id" not in c] == []


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


def has_outputs(nb) -> bool:
    """True for an executed notebook, False for a clean one."""
    return any(c.outputs for c in nb.cells if c.cell_type == "code")


def figures_drawn(source: str) -> int:
    """How many figures a cell's code draws: one per call of the package's plot functions."""
    return len(re.findall(r"\bplots\.plot_\w+\(", source))


def check_figures_inline(nb) -> None:
    """Each figure a cell draws is shown once, as a PNG, in that cell's outputs."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    drawn = {i: figures_drawn(c.source) for i, c in enumerate(code)}
    shown = {i: sum("image/png" in o.get("data", {}) for o in c.outputs) for i, c in enumerate(code)}
    wrong = {i: f"draws {drawn[i]}, shows {shown[i]}" for i in drawn if drawn[i] and drawn[i] != shown[i]}
    assert sum(drawn.values()) > 0 and not wrong, f"code cells' figures: {wrong} (is `%matplotlib inline` still run?)"


GENERIC_USERS = {"root", "user", "admin", "runner", "jovyan", "ubuntu"}  # names that say nothing about a person


def machine_paths(nb) -> list[str]:
    """Each output text that names an absolute path of a machine (or this user), around the first it names."""
    # a path's start, not a relative path's part (runs/cpu/work/) nor scrub_paths' placeholder (<site-packages>/)
    starts = r"(?<![\w.~-])/(?:home|Users|work|tmp|root)/"
    patterns = [starts, r"\b[A-Za-z]:\\", r"[/\\]site-packages\b", re.escape(str(ROOT))]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        user = ""
    if len(user) > 3 and user.lower() not in GENERIC_USERS:
        patterns.append(rf"\b{re.escape(user)}\b")
    texts = []
    for out in (o for c in nb.cells if c.cell_type == "code" for o in c.outputs):
        texts += [out.get("text", ""), out.get("evalue", ""), *out.get("traceback", [])]
        texts += [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
    found = [re.search("|".join(patterns), t) for t in texts]
    return [m.string[max(m.start() - 40, 0) : m.end() + 40] for m in found if m]


def test_committed_notebook_shows_each_figure_inline():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if not has_outputs(nb):
        pytest.skip("the committed notebook is clean: no figures to count")
    check_figures_inline(nb)


def test_committed_notebook_names_no_machine_path():
    # trivially true of a clean notebook; an executed one must have been through bench/notebook.scrub_paths
    assert not machine_paths(nbformat.read(NOTEBOOK, as_version=4))


def test_committed_notebook_stamp_names_the_code_at_head():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if not has_outputs(nb):
        pytest.skip("the committed notebook is clean: no stamp")
    if not shutil.which("git") or subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout, or no git")
    stamp = nb.cells[0].source
    commit, profile = re.search(r"commit `(\w+)`", stamp).group(1), re.search(r"profile `(\w+)`", stamp).group(1)
    assert "uncommitted changes" not in stamp, (
        f"the stamped run ran uncommitted code: commit it and re-run `python bench/notebook.py --profile {profile}`"
    )
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip(f"the stamp's commit {commit} is not in this clone (a shallow one?)")
    diff = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", "peft_sentiment", "bench"], cwd=ROOT)
    assert diff.returncode == 0, (
        f"re-run `python bench/notebook.py --profile {profile}` because the code changed since the stamped run: "
        f"peft_sentiment/ or bench/ differ between the stamp's commit {commit} and HEAD"
    )


def test_scrub_paths_leaves_no_machine_path(monkeypatch):
    monkeypatch.setenv("HOME", "/home/alice")
    notebook = load_bench("notebook")
    venv = f"{ROOT}/.venv/lib/python3.12/site-packages"
    kernel_file = f"{tempfile.gettempdir()}/ipykernel_4242/1234567.py"
    outputs = [
        new_output("stream", name="stderr", text=f"{venv}/peft/utils/other.py:1508: UserWarning: no config\n"),
        new_output("display_data", data={"text/plain": f"saved to {ROOT}/runs/cpu, work in runs/cpu/work/lora",
                                         "text/markdown": "cache in /home/alice/.cache/huggingface"}),
        new_output("error", ename="OSError", evalue=f"{ROOT}/x missing", traceback=[f"File {venv}/transformers/x.py:3",
                                                                                    f"{kernel_file}:2: UserWarning"]),
    ]  # fmt: skip
    nb = new_notebook(cells=[new_code_cell("x", outputs=outputs)])
    assert len(machine_paths(nb)) == 6  # the check sees each text that names one
    notebook.scrub_paths(nb)
    assert not machine_paths(nb)
    stream, display, error = nb.cells[0].outputs
    assert stream.text == "<site-packages>/peft/utils/other.py:1508: UserWarning: no config\n"
    assert display.data == {"text/plain": "saved to ./runs/cpu, work in runs/cpu/work/lora",
                            "text/markdown": "cache in ~/.cache/huggingface"}  # fmt: skip
    assert error.evalue == "./x missing"
    assert error.traceback == ["File <site-packages>/transformers/x.py:3", "<cell>:2: UserWarning"]


def stub_git(monkeypatch, notebook, changes: str) -> None:
    """bench/notebook.py's git helpers answer as a checkout at abc1234 with `changes` would."""
    monkeypatch.setattr(notebook, "git_head", lambda: "abc1234")
    monkeypatch.setattr(notebook, "git_changes", lambda *paths: changes)


def test_notebook_run_refuses_uncommitted_code(monkeypatch, capsys):
    notebook = load_bench("notebook")
    stub_git(monkeypatch, notebook, " M peft_sentiment/train.py")
    monkeypatch.setattr(notebook, "NotebookClient", None)  # calling it would fail: the refusal comes before any run
    assert notebook.main(["--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "peft_sentiment/train.py" in err and "abc1234" in err and "--allow-dirty" in err


class SilentClient:
    """A NotebookClient that executes nothing: the notebook keeps the outputs it has."""

    def __init__(self, nb, **_):
        pass

    def execute(self):
        pass


def test_notebook_run_with_allow_dirty_says_so_in_the_stamp(monkeypatch, tmp_path):
    notebook = load_bench("notebook")
    stub_git(monkeypatch, notebook, " M peft_sentiment/train.py")
    monkeypatch.setattr(notebook, "NotebookClient", SilentClient)
    monkeypatch.setattr(notebook, "NOTEBOOK", tmp_path / NOTEBOOK.name)
    for name in ("PEFT_PROFILE", recording.NOTEBOOK_COMMAND_ENV):
        monkeypatch.setenv(name, "")  # main sets them for the kernel: restored after the test
    shutil.copy(NOTEBOOK, notebook.NOTEBOOK)
    assert notebook.main(["--profile", "smoke", "--allow-dirty"]) == 0
    stamp = nbformat.read(notebook.NOTEBOOK, as_version=4).cells[0]
    assert "run-stamp" in stamp.metadata.tags and "commit `abc1234` + uncommitted changes" in stamp.source


def test_committed_notebook_shows_the_committed_records():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if not has_outputs(nb):
        pytest.skip("the committed notebook is clean")
    profile = re.search(r"profile `(\w+)`", nb.cells[0].source).group(1)
    records_dir = ROOT / make_config(profile).records_dir
    records = recording.read_records(records_dir, order=VARIANTS)
    texts = output_texts(nb)
    joined = "\n".join(texts)
    assert {r["command"] for r in records} == {f"python bench/notebook.py --profile {profile}"}, "the notebook's run wrote them"
    for r in records:
        low, high = r["metrics"]["accuracy_ci95"]
        assert (
            f"{label_of(r['variant'])}: test accuracy {r['metrics']['accuracy']:.1%} (95% CI {low:.1%} to {high:.1%})" in joined
        )
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
    check_figures_inline(executed)  # with MPLBACKEND=Agg, as CI has it: the notebook's %matplotlib inline wins
    load_bench("notebook").strip_progress(executed)  # as bench/notebook.py saves a run
    check_outputs_readable(executed, images=7)
    # The raw smoke run names no machine path today (its tiny local model draws no peft warning), the cpu run's peft
    # warnings do (site-packages files): whatever appears, bench/notebook.py's scrub must leave none
    load_bench("notebook").scrub_paths(executed, root=tmp_path)  # with this run's folder as the repository
    assert not machine_paths(executed)

    # The models the notebook builds in view are the package's: its pipeline predicts the same on every review.
    out = tmp_path / "package"
    cfg = make_config("smoke", data_dir=env["IMDB_DATA_DIR"], records_dir=str(out / "records"), work_dir=str(out / "work"),
                      save_dir=str(out))  # fmt: skip
    for notebook_record, package_record in zip(records, run_training(cfg), strict=True):
        assert notebook_record["variant"] == package_record["variant"]
        assert notebook_record["predictions"] == pytest.approx(package_record["predictions"], abs=1e-6)
