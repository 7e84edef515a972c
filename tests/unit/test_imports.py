"""Importing the logic, the tasks and the app reads no configuration (issue 17, part 4)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

MODULES = ["backup.edge_export", "backup.table_backup", "backup.customer_files", "tasks.edge_export",
           "tasks.table_backup", "tasks.customer_files", "tasks.maintenance", "workers.app"]


@pytest.mark.parametrize("module", MODULES)
def test_import_needs_no_config_file(module, tmp_path):
    # A config path that does not exist: any load at import would fail with "config file not found".
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "BACKUP_CONFIG": str(tmp_path / "missing.yaml")}
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_config_check_of_the_app_happens_on_first_use(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "BACKUP_CONFIG": str(tmp_path / "missing.yaml")}
    done = subprocess.run([sys.executable, "-c", "from workers.app import app; app.conf.broker_url"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "config file not found" in done.stderr


def test_base_imports_nothing_of_the_project():
    import ast

    for path in (ROOT / "base").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                top = node.module.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("__future__", "base"), \
                    f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    assert top in sys.stdlib_module_names or top == "base", f"{path.name} imports {alias.name}"
