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
