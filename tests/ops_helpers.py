"""Helpers of the operations tests: long-running project processes (beat, Flower, exporter, extra workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Proc:
    """A project process (``python -m workers.cli ...`` or any argv) in its own process group, logging to a file."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None):
        self.argv, self.log = argv, log
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.proc: subprocess.Popen | None = None

    @classmethod
    def backupctl(cls, config: Path, *args: str, log: Path, env: dict | None = None) -> "Proc":
        """``backupctl --config CONFIG ARGS...`` as a process."""
        return cls([sys.executable, "-m", "workers.cli", "--config", str(config), *args], log, env)

    def start(self) -> "Proc":
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def text(self) -> str:
        """Everything the process logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, needle: str, timeout: float) -> None:
        """Wait until ``needle`` appears in the log; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[3:]} exited ({self.proc.returncode}) before logging "
                                     f"{needle!r}:\n{self.text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not in log {self.log} after {timeout}s:\n{self.text()[-3000:]}")

    def wait_for_http(self, url: str, timeout: float) -> None:
        """Wait until ``url`` answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}):\n{self.text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{url} did not answer within {timeout}s:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the process group (a crash: nothing is cleaned up)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the process group, SIGKILL if it does not end."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


SAMPLE_TABLE = "mnaas_ops.traffic"
SAMPLE_ROWS = 20_000  # enough for the export phase to run for seconds (visible as STARTED in Flower)


def sample_table(settings) -> str:
    """The operations tests' sample table, created once per session (no test changes it)."""
    from base.errors import NotFound
    from base.identifiers import TableName
    from connectors.hive import HiveClient
    from local_platform.sample_data import create_sample_table

    table = TableName.parse(SAMPLE_TABLE)
    with HiveClient.from_settings(settings) as hive:
        try:
            hive.columns(table)
            if hive.query(f"SELECT count(*) FROM {table.sql}", "count sample rows")[0][0] == SAMPLE_ROWS:
                return SAMPLE_TABLE
        except NotFound:
            pass
        create_sample_table(hive, table, rows=SAMPLE_ROWS)
    return SAMPLE_TABLE
