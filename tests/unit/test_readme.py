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


def test_enqueue_contract_lists_the_registered_workflows():
    from backup.workflow import reference_markdown as workflows

    text = (README.parent / "docs" / "enqueue-contract.md").read_text()
    missing = [line for line in workflows().splitlines() if line and line not in text]
    assert missing == [], "docs/enqueue-contract.md workflow table is stale; regenerate with: python -m backup.workflow"
