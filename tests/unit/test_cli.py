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



def _in_process_error(capsys, fragment: str, *args: str) -> None:
    """``backupctl ARGS`` in this process (no interpreter start): exit code 2 and one line naming the problem."""
    from workers.cli import main

    capsys.readouterr()
    code = main(["--config", str(CONFIG_PATH), *args])
    out = capsys.readouterr()
    assert code == 2 and out.out == "", (code, out)
    assert out.err.startswith("backupctl: error: ") and out.err.count("\n") == 1, out.err
    assert fragment in out.err, out.err


def test_plan_bad_input_is_one_line_before_anything_is_read(capsys):
    _in_process_error(capsys, "invalid table name 'x;y'", "plan", "edge-export", "x;y")
    _in_process_error(capsys, "edge-export needs a target DB.TABLE", "plan", "edge-export")
    _in_process_error(capsys, "2026-13-01", "run", "edge-export", "db.t", "--end", "2026-13-01", "--plan")
    _in_process_error(capsys, "use an absolute path", "plan", "table-backup", "db.t", "--source", "relative/path")
    _in_process_error(capsys, "always covers", "plan", "customer-files", "acme")


def test_drill_bad_targets_are_one_line(capsys):
    _in_process_error(capsys, "invalid drill target", "run", "restore-drill", "nope:db.t")
    _in_process_error(capsys, "invalid table name", "run", "restore-drill", "edge-export:db")
    _in_process_error(capsys, "restore_drill.targets", "run", "restore-drill")
