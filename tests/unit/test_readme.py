"""The README's configuration reference is the generated one, so it cannot drift from config/settings.py."""

from __future__ import annotations

from pathlib import Path

from config.settings import reference_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_has_current_config_reference():
    text = README.read_text()
    missing = [line for line in reference_markdown().splitlines() if line and line not in text]
    assert missing == [], "README config reference is stale; regenerate with: python -m config.settings"


def test_quickstart_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
