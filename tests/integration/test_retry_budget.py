"""The retry budget at its boundary, on a real worker: the backup server away for less than ``retry.budget``
is ridden through; away for longer, the job fails loudly once, naming the budget.

The worker reaches the platform's real sshd through a TCP relay that the test
opens and closes (closed: nothing listens, connections are refused), on a
broker of its own so the session's worker does not take the job.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import WorkerProc, write_config
from tests.helpers import phase_of, sink_counts, wait_until
from bench.faultkit import PrivateRedis, Relay

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(settings, platform, tmp_path, private_broker_table):
    """A broker, a relay to sshd (closed) and a known_hosts naming the relay's port."""
    from tests.conftest import PORT_OFFSET

    broker = PrivateRedis(6500 + PORT_OFFSET, tmp_path / "redis").start()
    relay = Relay(settings.sftp.port)
    known = tmp_path / "known_hosts"
    line = settings.path(settings.sftp.known_hosts).read_text().strip().split(" ", 1)[1]
    known.write_text(f"[127.0.0.1]:{relay.port} {line}\n")
    yield broker, relay, known
    relay.close()
    broker.stop()


def _run(settings, tmp_path, setup, budget: int, table: str, open_after_attempts: int | None):
    from backup.resources import Resources
    from config.settings import load_settings
    from workers.app import create_app

    broker, relay, known = setup
    cfg = write_config(tmp_path / "budget.yaml", {
        "redis": {"url": broker.url},
        "sftp": {"port": relay.port, "known_hosts": str(known)},
        "retry": {"budget": budget, "max_retries": None, "backoff": 1, "backoff_max": 4}})
    own = load_settings(cfg)
    res, app = Resources(own), create_app(own)
    res.alerter.success("edge-export", table)
    worker = WorkerProc(cfg, f"budget{uuid.uuid4().hex[:6]}", app=app)
    mails0, tickets0 = sink_counts(settings)
    try:
        worker.start()
        job_id = uuid.uuid4().hex
        app.send_task("backup.edge_export", kwargs={"table": table}, task_id=job_id)

        def transfer():
            return phase_of(res, job_id, "transfer")
        if open_after_attempts:
            wait_until(lambda: transfer().get("attempts", 0) >= open_after_attempts, budget, "failed attempts")
            relay.open()
        rec = wait_until(lambda: (r := res.jobs.find(job_id)) and r["state"] in ("success", "failed") and r,
                         budget + 90, "the job to end")
    finally:
        worker.stop()
    return rec, transfer(), sink_counts(settings)[0] - mails0, sink_counts(settings)[1] - tickets0


def test_backup_server_away_for_less_than_the_budget_is_ridden_through(settings, tmp_path, setup,
                                                                      private_broker_table):
    rec, transfer, mails, tickets = _run(settings, tmp_path, setup, budget=40, table=private_broker_table,
                                         open_after_attempts=3)
    assert rec["state"] == "success", rec
    # The relay opens once a third attempt has *entered* the phase: the first two failed, the third may have
    # connected before or after the opening (a loaded machine decides), so three or more attempts.
    assert transfer["attempts"] >= 3 and transfer["finished"] - transfer["started"] < 40
    assert (mails, tickets) == (0, 0)


def test_backup_server_away_for_longer_than_the_budget_fails_loudly_once(settings, tmp_path, setup,
                                                                         private_broker_table):
    began = time.time()
    rec, transfer, mails, tickets = _run(settings, tmp_path, setup, budget=12, table=private_broker_table,
                                         open_after_attempts=None)
    assert rec["state"] == "failed" and rec["phase"] == "transfer"
    assert rec["error"].startswith("ConnectionFailed:") and "(retry.budget 12s)" in rec["error"], rec["error"]
    # The budget was used whole: the last attempt started near its end, not minutes later.
    assert 11 <= transfer["finished"] - transfer["started"] < 12 + 20
    assert transfer["attempts"] >= 4 and time.time() - began < 120
    assert rec["alert_sent"] is True and (mails, tickets) == (1, 1)


def test_black_hole_mid_transfer_is_cut_by_the_stall_timeout_and_retried(settings, tmp_path, setup,
                                                                          private_broker_table):
    """Without the stall timeout the upload would hang until OpenSSH's keepalive gives up (3 x 30 s)."""
    from backup.resources import Resources
    from config.settings import load_settings
    from workers.app import create_app

    broker, relay, known = setup
    relay.open()
    cfg = write_config(tmp_path / "hole.yaml", {
        "redis": {"url": broker.url},
        "sftp": {"port": relay.port, "known_hosts": str(known), "rate_limit_mbps": 0.01, "streams": 1,
                 "stall_timeout": 5, "connect_timeout": 5},
        "edge_export": {"compresslevel": 1},
        "retry": {"budget": 120, "max_retries": None, "backoff": 1, "backoff_max": 4}})
    own = load_settings(cfg)
    res, app = Resources(own), create_app(own)
    worker = WorkerProc(cfg, f"hole{uuid.uuid4().hex[:6]}", app=app)
    try:
        worker.start()
        job_id = uuid.uuid4().hex
        app.send_task("backup.edge_export", kwargs={"table": private_broker_table}, task_id=job_id)

        def transfer():
            return phase_of(res, job_id, "transfer")
        wait_until(lambda: (res.jobs.find(job_id) or {}).get("progress", {}).get("transfer", {}).get("bytes", 0) > 0,
                   90, "the upload to start")
        relay.freeze()
        frozen = time.monotonic()
        wait_until(lambda: "no progress for 5s" in (transfer().get("last_error") or ""), 60,
                   "the stalled upload to be cut")
        cut_after = time.monotonic() - frozen
        relay.thaw()
        rec = wait_until(lambda: (r := res.jobs.find(job_id)) and r["state"] in ("success", "failed") and r, 120,
                         "the job to end")
    finally:
        relay.thaw()
        worker.stop()
    assert cut_after < 30, cut_after  # 5 s of no progress, plus the poll and the retry note
    assert rec["state"] == "success", rec
    assert transfer()["attempts"] >= 2
