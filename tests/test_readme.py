"""The README is the project's front page: short, and quoting the package where the package decides."""

from pathlib import Path

from peft_sentiment.config import PROFILE_COSTS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_fits_on_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail to docs/ (at most 250)"


def test_readme_quotes_what_each_profile_costs():
    text = README.read_text()
    missing = [name for name, cost in PROFILE_COSTS.items() if f"| `{name}` |" not in text or cost not in text]
    assert not missing, f"README.md's profile table must quote config.PROFILE_COSTS for {missing}"
