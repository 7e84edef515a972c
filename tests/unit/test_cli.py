"""backupctl: errors are one line on stderr with exit code 2, no traceback."""

from __future__ import annotations

from tests.conftest import CONFIG_PATH
from tests.helpers import backupctl


def _one_line_error(out, fragment: str) -> None:
    assert out.returncode == 2, out
    assert out.stderr.startswith("backupctl: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr and fragment in out.stderr


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hive:\n  prot: 1\n")
    _one_line_error(backupctl("--config", str(bad), "jobs"), "hive.prot: unknown key")


def test_unknown_job(redis_client):
    _one_line_error(backupctl("status", "no-such-job", config=CONFIG_PATH), "no job record 'no-such-job'")


def test_bad_window_refused_before_enqueue():
    _one_line_error(backupctl("run", "edge-export", "db.t", "--end", "2026-02-30", config=CONFIG_PATH),
                    "invalid end date '2026-02-30'")
    _one_line_error(backupctl("run", "edge-export", "db.t", "--months", "0", config=CONFIG_PATH), "invalid months 0")


def test_plan_bad_input_is_one_line_before_anything_is_read():
    _one_line_error(backupctl("plan", "edge-export", "x;y", config=CONFIG_PATH), "invalid table name 'x;y'")
    _one_line_error(backupctl("plan", "edge-export", config=CONFIG_PATH), "edge-export needs a target DB.TABLE")
    _one_line_error(backupctl("run", "edge-export", "db.t", "--end", "2026-13-01", "--plan", config=CONFIG_PATH),
                    "2026-13-01")
    _one_line_error(backupctl("plan", "table-backup", "db.t", "--source", "relative/path", config=CONFIG_PATH),
                    "use an absolute path")
    _one_line_error(backupctl("plan", "customer-files", "acme", config=CONFIG_PATH), "always covers")


def test_drill_bad_targets_are_one_line():
    _one_line_error(backupctl("run", "restore-drill", "nope:db.t", config=CONFIG_PATH), "invalid drill target")
    _one_line_error(backupctl("run", "restore-drill", "edge-export:db", config=CONFIG_PATH), "invalid table name")
    _one_line_error(backupctl("run", "restore-drill", config=CONFIG_PATH), "restore_drill.targets")
