"""The retry budget at its boundary, on a real worker: the backup server away for less than ``retry.budget``
is ridden through; away for longer, the job fails loudly once, naming the budget.

The worker reaches the platform's real sshd through a TCP relay that the test
opens and closes (closed: nothing listens, connections are refused), on a
broker of its own so the session's worker does not take the job.  Edge-export's
upload, and customer-files' copies to a secondary on the edge node (the relay
capped so the copies last seconds and the outage lands mid-copy).
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


# 39 s in CI: make fault-trials (CI runs it after make test), which make test's 25 minutes have no room for
@pytest.mark.faults
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


# -- customer-files: a copy cut by an outage is retried within the budget ----------------------------------------
# The secondary is on the edge node behind the relay, capped per connection so the copies last seconds; the fault
# lands once a temporary copy is being written there (observed on the edge node's disk, this machine).

CF_FILES, CF_BYTES, CF_RATE = 8, 300_000, 100_000  # > 256 KiB: streamed, not written from memory; ~6 s of copies
CF_TABLES = ("mnaas_test.cf_retry_inter", "mnaas_test.cf_retry_count")


@pytest.fixture
def cf_setup(settings, setup, tmp_path):
    """Source files of one customer, fresh count tables, and the relay capped so that copies last."""
    import hashlib
    import os
    import random

    broker, relay, known = setup
    relay.rate = CF_RATE
    relay.open()
    rng = random.Random(5)
    src = tmp_path / "src" / "acme"
    src.mkdir(parents=True)
    old = time.time() - 3600
    digests = {}
    for i in range(CF_FILES):
        data = bytes(rng.getrandbits(8) for _ in range(CF_BYTES - 2)) + b"\r\n"
        (src / f"traffic_{i}.csv").write_bytes(data)
        os.utime(src / f"traffic_{i}.csv", (old + i, old + i))
        digests[f"traffic_{i}.csv"] = hashlib.sha256(data).hexdigest()
    for table in CF_TABLES:
        _hive(settings, f"DROP TABLE IF EXISTS {table}")
    return broker, relay, known, digests


def _cf_config(settings, tmp_path, cf_setup, budget: int):
    import copy

    import yaml

    from config.settings import _merge
    from tests.conftest import TEST_CONFIG

    broker, relay, known, _ = cf_setup
    data = _merge(copy.deepcopy(TEST_CONFIG), {
        "redis": {"url": broker.url},
        "sftp": {"port": relay.port, "known_hosts": str(known)},
        "retry": {"budget": budget, "max_retries": None, "backoff": 1, "backoff_max": 2}})
    data["customer_files"] = {  # the whole section: only this customer
        "source_dirs": [str(tmp_path / "src")],
        "customers": {"acme": {"primary": str(tmp_path / "primary" / "acme"),
                               "secondary": f"sftp://127.0.0.1:{relay.port}{tmp_path}/edge/acme"}},
        "domains": {"traffic": ["traffic_*.csv"]}, "settle_seconds": 0,
        "staging_table": CF_TABLES[0], "final_table": CF_TABLES[1],
        "status_flag": str(tmp_path / "status" / "flag"), "manifest_dir": str(tmp_path / "manifests")}
    path = tmp_path / "cf-budget.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cf_copies(settings, tmp_path) -> dict[str, dict[str, str]]:
    """role -> file name -> SHA-256 of every file at each destination (temporary files included), from outside:
    hashlib on the primary, OpenSSH's sha256sum on the edge node (its exit code asserted)."""
    import hashlib

    from tests.helpers import ssh

    primary = tmp_path / "primary" / "acme"
    found = {"primary": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in primary.rglob("*") if p.is_file()}}
    out = ssh(settings, ["find", f"{tmp_path}/edge/acme", "-type", "f", "-exec", "sha256sum", "{}", "+"])
    found["secondary"] = {line[66:].rsplit("/", 1)[1]: line[:64] for line in out.stdout.splitlines() if line}
    return found


def _hive(settings, statement: str) -> list[tuple]:
    """One statement over a plain impyla connection of its own (outside the project's code)."""
    from impala.dbapi import connect

    conn = connect(settings.hive.host, settings.hive.port, auth_mechanism="NOSASL")
    cur = conn.cursor()
    try:
        cur.execute(statement)
        return cur.fetchall() if statement.startswith("SELECT") else []
    finally:
        cur.close()
        conn.close()


def _cf_counted(settings) -> list[tuple]:
    """(file, SHA-256, rows) of the count table."""
    return sorted(_hive(settings, f"SELECT file_name, sha256, count(*) FROM {CF_TABLES[1]} GROUP BY file_name, sha256"))


def _wait_mid_copy(tmp_path) -> None:
    """Until a temporary copy is being written on the edge node: the copies are under way."""
    from storage.base import is_temp_name

    folder = tmp_path / "edge" / "acme" / "traffic"
    wait_until(lambda: folder.is_dir() and any(is_temp_name(p.name) for p in folder.iterdir()), 90,
               "a copy in flight on the edge node", interval=0.02)


def _cf_worker(settings, tmp_path, cf_setup, budget: float):
    """The customer-files config with this retry budget: its resources (alert episode closed), its app and a
    worker on it (not started yet)."""
    from backup.resources import Resources
    from config.settings import load_settings
    from workers.app import create_app

    cfg = _cf_config(settings, tmp_path, cf_setup, budget=budget)
    own = load_settings(cfg)
    res, app = Resources(own), create_app(own)
    res.alerter.success("customer-files", "all")
    return res, app, WorkerProc(cfg, f"cfbudget{uuid.uuid4().hex[:6]}", app=app)


def test_customer_files_copy_cut_by_a_short_outage_is_retried_and_succeeds(settings, tmp_path, cf_setup):
    """sshd unreachable for a few seconds mid-copy: the copy task retries within retry.budget; every file ends
    once at both destinations with the source's SHA-256, counted once, no alert."""
    relay, digests = cf_setup[1], cf_setup[3]
    res, app, worker = _cf_worker(settings, tmp_path, cf_setup, budget=60)
    mails0, tickets0 = sink_counts(settings)
    try:
        worker.start()
        job_id = uuid.uuid4().hex
        app.send_task("backup.customer_files", task_id=job_id)
        _wait_mid_copy(tmp_path)
        relay.close()  # connections refused, the ones in flight dropped
        # The outage is seen (an attempt failed for it) and outlasts a retry, then it ends.
        wait_until(lambda: phase_of(res, job_id, "copy:acme").get("attempts", 0) >= 3, 60, "retries during the outage")
        relay.open()
        rec = wait_until(lambda: (r := res.jobs.find(job_id)) and r["state"] in ("success", "failed") and r, 180,
                         "the job to end")
    finally:
        if relay.sock is None:
            relay.open()
        worker.stop()
    copy_phase = phase_of(res, job_id, "copy:acme")
    assert rec["state"] == "success" and rec["outputs"]["flag"] == "SUCCESS", rec.get("error")
    assert copy_phase["attempts"] >= 2 and copy_phase["deliveries"] == copy_phase["attempts"], copy_phase
    assert (tmp_path / "status" / "flag").read_text().splitlines()[0] == "SUCCESS"
    # Each file exactly once at both destinations, byte-identical, nothing else there (no temporary file).
    assert _cf_copies(settings, tmp_path) == {"primary": digests, "secondary": digests}
    assert _cf_counted(settings) == sorted((name, digest, 1) for name, digest in digests.items())
    assert rec["outputs"]["totals"]["copied"] == CF_FILES and rec["outputs"]["totals"]["failed"] == 0
    assert sink_counts(settings) == (mails0, tickets0), "a recovered run sends no alert"
    assert res.locks.holder("customer-files", "all") is None


# 27 s in a local CI run (2026-12-06): make fault-trials, as make test went over its 25 minutes (CI of fea41ad);
# make test keeps the short outage that is ridden through and edge-export's outage past the budget
@pytest.mark.faults
def test_customer_files_outage_longer_than_the_budget_fails_once_then_copied_by_the_next_run(
        settings, tmp_path, cf_setup):
    """sshd unreachable past a short retry.budget mid-copy: the run fails (FAIL: its only customer had failures)
    with exactly one alert naming the budget; the next run copies the files that failed, each once, and sends
    nothing."""
    relay, digests = cf_setup[1], cf_setup[3]
    res, app, worker = _cf_worker(settings, tmp_path, cf_setup, budget=6)
    mails0, tickets0 = sink_counts(settings)
    try:
        worker.start()
        job_id = uuid.uuid4().hex
        app.send_task("backup.customer_files", task_id=job_id)
        _wait_mid_copy(tmp_path)
        relay.close()
        rec = wait_until(lambda: (r := res.jobs.find(job_id)) and r["state"] in ("success", "failed") and r, 180,
                         "the job to end")
        alerts = sink_counts(settings)
        relay.open()
        primary = {p.name: p.stat().st_ino for p in (tmp_path / "primary" / "acme" / "traffic").iterdir()}
        nxt = uuid.uuid4().hex
        app.send_task("backup.customer_files", task_id=nxt)
        again = wait_until(lambda: (r := res.jobs.find(nxt)) and r["state"] in ("success", "failed") and r, 180,
                           "the next run to end")
    finally:
        if relay.sock is None:
            relay.open()
        worker.stop()
    # The one customer had failures: the flag says FAIL (PARTIAL when some customers had none), one alert.
    assert rec["state"] == "failed" and rec["outputs"]["flag"] == "FAIL", (rec["outputs"].get("flag"), rec["error"])
    assert rec["error"].startswith("FAIL: 1 of 1 customer(s) had failures: acme (") and \
        "(retry.budget 6s)" in rec["error"], rec["error"]
    assert phase_of(res, job_id, "copy:acme")["attempts"] >= 3
    assert rec["alert_sent"] is True and alerts == (mails0 + 1, tickets0 + 1)
    failed = rec["outputs"]["totals"]["failed"]
    assert failed >= 1
    # The next run: only the files that failed, each copied once (the primary's copies verified, not rewritten).
    assert again["state"] == "success" and again["outputs"]["flag"] == "SUCCESS", again.get("error")
    assert again["outputs"]["totals"]["copied"] == failed and again["outputs"]["totals"]["unchanged"] == CF_FILES - failed
    assert {p.name: p.stat().st_ino for p in (tmp_path / "primary" / "acme" / "traffic").iterdir()} == primary
    assert _cf_copies(settings, tmp_path) == {"primary": digests, "secondary": digests}
    assert _cf_counted(settings) == sorted((name, digest, 1) for name, digest in digests.items())
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1), "one alert for the episode, none for the rerun"
    assert res.locks.holder("customer-files", "all") is None


@pytest.mark.parametrize("call", ["list", "delete"])
def test_an_sftp_channel_lost_under_a_pooled_connection_is_a_connection_failure(settings, platform, tmp_path, call):
    """paramiko reports a call on a closed SFTP channel as ``OSError("Socket is closed")`` with no errno, which
    classifies as fatal; it closes a dropped connection's channels before the transport says it is inactive,
    so a pooled session can look alive with its channel gone.  The backend must report such a failure as a
    lost connection (retryable): the campaign's sshd rows failed every customer-files trial on it (a copy's
    write with ``FatalError: … OSError: Socket is closed``, never retried).  The channel is closed here under
    a pooled connection to the platform's sshd, as the teardown of a dropped connection does."""
    from base.errors import ConnectionFailed
    from storage import open_backend
    from storage.locations import storage_options

    backend, folder = open_backend(f"sftp://127.0.0.1:{settings.sftp.port}{tmp_path}/lost",
                                   **storage_options(settings, "sftp://"))
    with backend:
        backend.mkdir(folder)
        (session,) = backend._idle  # the connection mkdir used, back in the pool
        session.sftp.get_channel().close()
        with pytest.raises(ConnectionFailed, match="Socket is closed \\(the SSH connection was lost\\)"):
            backend.list(folder) if call == "list" else backend.delete(f"{folder}/x.csv")
        assert backend.list(folder) == []  # the lost session was dropped, not pooled: the next call reconnects


def test_a_connection_dropped_during_authentication_is_a_connection_failure(settings, platform, tmp_path):
    """paramiko raises the same AuthenticationException for a refused key and for an answer that never came
    (a black hole: "Authentication timeout.") or a connection dropped meanwhile; only a refusal is AuthFailed
    (fatal), the others are retried.  The campaign's black-hole rows failed two of three customer-files trials
    at once on it.  Here a server with the platform's host key drops the connection when asked to authenticate;
    the platform's real sshd refusing a key it does not know stays AuthFailed."""
    import socket
    import threading

    import paramiko

    from base.errors import AuthFailed, ConnectionFailed
    from connectors.sftp import SftpTarget

    ssh_dir = settings.path(settings.sftp.key_file).parent
    host_key = paramiko.Ed25519Key.from_private_key_file(str(ssh_dir / "host_ed25519"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    line = settings.path(settings.sftp.known_hosts).read_text().strip().split(" ", 1)[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {line}\n")

    class DropsAtAuthentication(paramiko.ServerInterface):
        def get_allowed_auths(self, username):
            return "publickey"

        def check_auth_publickey(self, username, key):
            conn.shutdown(socket.SHUT_RDWR)  # the connection is gone before any answer
            return paramiko.AUTH_FAILED

    server = None

    def serve():
        nonlocal server, conn
        conn, _ = listener.accept()
        server = paramiko.Transport(conn)
        server.add_server_key(host_key)
        server.start_server(server=DropsAtAuthentication())

    conn = None
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        target = SftpTarget.for_address("127.0.0.1", port, None, settings.path(settings.sftp.key_file), known,
                                        connect_timeout=5)
        with pytest.raises(ConnectionFailed, match="no answer to authentication"):
            target.connect()
    finally:
        thread.join(10)
        if server is not None:
            server.close()
        listener.close()
    # A real refusal: the platform's sshd and a key it does not authorize.
    stranger = tmp_path / "stranger"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(stranger))
    target = SftpTarget.for_address("127.0.0.1", settings.sftp.port, None, stranger,
                                    settings.path(settings.sftp.known_hosts), connect_timeout=5)
    with pytest.raises(AuthFailed, match="authentication refused"):
        target.connect()


def _relayed(settings, tmp_path) -> tuple[Relay, object]:
    """A relay in front of the platform's sshd (open) and settings whose SFTP trusts the server through it, with a
    5 s stall and connect timeout."""
    from config.settings import load_settings

    relay = Relay(settings.sftp.port)
    known = tmp_path / "known_hosts"
    line = settings.path(settings.sftp.known_hosts).read_text().strip().split(" ", 1)[1]
    known.write_text(f"[127.0.0.1]:{relay.port} {line}\n")
    own = load_settings(write_config(tmp_path / "relayed.yaml", {
        "sftp": {"known_hosts": str(known), "stall_timeout": 5, "connect_timeout": 5}}))
    relay.open()
    return relay, own


def test_a_black_holed_sftp_copy_write_fails_after_the_stall_timeout(settings, platform, tmp_path):
    """A copy to an ``sftp://`` location (customer-files' secondaries) through a link that goes black: the write
    fails as retryable once ``sftp.stall_timeout`` passes without an answer, not after the SFTP channel's former
    fixed 60 s (the campaign's black-hole row lost a minute per attempt to it)."""
    import posixpath

    from base.errors import ConnectionFailed
    from storage.locations import open_location

    relay, own = _relayed(settings, tmp_path)
    backend, base = open_location(own, f"sftp://{settings.sftp.host}:{relay.port}{tmp_path}/dest")
    try:
        backend.mkdir(base)  # connected: the session the write will use is open
        relay.freeze()
        began = time.monotonic()
        with pytest.raises(ConnectionFailed) as failed:
            backend.write_temp(posixpath.join(base, "file.bin"), [b"x" * (4 << 20)])
        took = time.monotonic() - began
    finally:
        relay.thaw()
        relay.close()
        backend.close()
    assert failed.value.retryable, failed.value
    assert 5 <= took < 30, f"{took:.1f}s: {failed.value}"  # one stall timeout, plus the temp file's discard


def test_a_paramiko_error_no_call_wrapped_is_a_connection_failure(settings, platform):
    """Found by the campaign (restore-edge-export, sshd unreachable: 13 of 20 trials failed at once with
    ``FatalError: fetch: SSHException: Server connection dropped``): paramiko raises that when a request's answer
    never comes (the connection dropped between the request and its answer: most likely closing the remote file
    after the read had failed, in the campaign), and a call the session block did not wrap let it out raw, classified fatal.  Any
    paramiko error leaving a session block is now a ConnectionFailed, and the session is not pooled again.  (The
    race itself depends on when the drop lands; the test below drives a real drop through the whole download.)"""
    import paramiko

    from base.errors import ConnectionFailed
    from storage.locations import open_location

    backend, base = open_location(settings, f"sftp://{settings.sftp.host}:{settings.sftp.port}/tmp")
    try:
        with pytest.raises(ConnectionFailed) as failed:
            with backend._session() as session:
                pooled = session
                raise paramiko.SSHException("Server connection dropped: ")
        assert failed.value.retryable and "Server connection dropped" in str(failed.value)
        assert pooled not in backend._idle and not pooled.transport.is_active()
    finally:
        backend.close()


def test_a_download_cut_by_a_dropped_connection_is_a_connection_failure(settings, platform, tmp_path):
    """sshd unreachable in the middle of a download (a restore's fetch): the reader sees a ConnectionFailed, retried
    within ``retry.budget``, whichever paramiko call notices the drop."""
    from base.errors import ConnectionFailed
    from storage.locations import open_location

    source = tmp_path / "archive.bin"
    source.write_bytes(bytes(range(256)) * (64 * 1024))  # 16 MiB: more than the read-ahead
    relay, own = _relayed(settings, tmp_path)
    backend, _ = open_location(own, f"sftp://{settings.sftp.host}:{relay.port}{tmp_path}")
    try:
        with pytest.raises(ConnectionFailed) as failed:
            with backend.open_read(str(source)) as stream:
                stream.read(1 << 20)
                relay.close()  # sshd unreachable: every relayed connection dropped
                while stream.read(1 << 20):
                    pass
    finally:
        relay.close()
        backend.close()
    assert failed.value.retryable, failed.value
