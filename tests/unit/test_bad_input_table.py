"""docs/bad-inputs.md is a table of hostile inputs, each row naming the test that drives it: the table cannot
name a test that does not exist, and it keeps covering every entry point."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "bad-inputs.md"
ENTRY_POINTS = ("CLI", "public task", "config", "file name", "CSV", "server reply")
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:::(\w+))?`")


def rows() -> list[list[str]]:
    found = []
    for line in TABLE.read_text().splitlines():
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| input |"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        found.append(cells)
    return found


def defined_tests(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def test_every_row_names_an_existing_test():
    problems = []
    for cells in rows():
        if len(cells) != 4:
            problems.append(f"row does not have 4 cells: {cells}")
            continue
        match = TEST_ID.search(cells[3])
        if not match:
            problems.append(f"row names no test as `tests/…py::name`: {cells[0]}")
            continue
        path = ROOT / match.group(1)
        if not path.is_file():
            problems.append(f"{match.group(1)} does not exist")
            continue
        names = defined_tests(path)
        for name in filter(None, match.group(2, 3)):
            if name not in names:
                problems.append(f"{match.group(1)} defines no {name}")
    assert problems == []


def test_table_covers_every_entry_point_with_at_least_40_rows():
    table = rows()
    assert len(table) >= 40, f"docs/bad-inputs.md has {len(table)} rows; the security issue asks for at least 40"
    entered = " ".join(cells[1] for cells in table)
    missing = [entry for entry in ENTRY_POINTS if entry.lower() not in entered.lower()]
    assert missing == [], f"no row enters at: {missing}"
