"""local_platform is development tooling: production packages never import it at module level, and the
CLI only inside the commands that drive the platform."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("base", "backup", "connectors", "storage", "config", "tasks", "workers")
CLI_COMMANDS = {"cmd_platform", "cmd_sample_data", "cmd_demo"}


def _imports_local_platform(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "local_platform" or a.name.startswith("local_platform.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] == "local_platform"
    return False


def _functions_importing(tree: ast.Module) -> tuple[bool, set[str]]:
    """(whether a module-level statement imports local_platform, the top-level functions that do)."""
    functions, module_level = set(), False
    for stmt in tree.body:
        hits = any(_imports_local_platform(n) for n in ast.walk(stmt))
        if hits and isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.add(stmt.name)
        elif hits:
            module_level = True
    return module_level, functions


def test_production_packages_do_not_import_local_platform():
    offenders = []
    for package in PRODUCTION:
        for path in sorted((ROOT / package).rglob("*.py")):
            module_level, functions = _functions_importing(ast.parse(path.read_text(), str(path)))
            rel = path.relative_to(ROOT).as_posix()
            allowed = CLI_COMMANDS if rel == "workers/cli.py" else set()
            if module_level or functions - allowed:
                offenders.append(rel)
    assert offenders == []
