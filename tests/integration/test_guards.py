"""Each guard of the commit path, driven by the failure it exists for; each test fails if its guard is removed.

The phases run in this process against the real platform (HiveServer2, sshd,
Redis).  What is on the edge node is read with OpenSSH's own client, and every
ssh call's exit status is checked, so a failing ssh never passes for "no file".
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
import uuid
from pathlib import Path

import pytest

from base.text import run_id
from backup import edge_export as wf
from base.errors import AlreadyExists, ChecksumMismatch, ConnectionFailed, LockLost, TooManyDeliveries
from backup.resources import Resources
from backup.runner import fail_job, phase
from connectors.sftp import upload, verify_and_commit
from tests.helpers import new_sample_table, remote_files, run_phases_inline, ssh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guard_table(platform, settings):
    return new_sample_table(settings, "traffic_guards", rows=3000)


def _exported(res, table) -> str:
    """A job with its lock taken and its archive exported; returns the job id."""
    job_id = wf.submit(res, table)["job_id"]
    for name in ("lock", "export"):
        with phase(res, job_id, name) as ctx:
            wf.DEFINITION.phase(name).run(ctx)
    rec = res.jobs.get(job_id)
    assert rec["state"] == "running", f"the test job could not start: {rec.get('reason') or rec.get('error')}"
    return job_id


def _uploaded(res, ctx, verify: str = "in-stream"):
    """The job's archive uploaded to its temporary remote name, not yet verified: (final, temp, Uploaded)."""
    final, tmp = wf.remote_paths(res, ctx.rec)
    target = res.sftp()
    target.s = target.s.model_copy(update={"verify": verify})
    with target.connect() as sess:
        sess.makedirs(posixpath.dirname(final))
    uploaded = upload(target, Path(ctx.rec["outputs"]["local_path"]), tmp)
    assert (uploaded.remote_sha256 is not None) == (verify == "in-stream"), uploaded
    return final, tmp, uploaded


def _steal(res, rec) -> str:
    """Another run takes the lock: the holder's lock expired and a new job was granted it (a newer token)."""
    held = rec["lock"]
    res.redis.delete(held["key"])
    thief = uuid.uuid4().hex
    new, _ = res.locks.acquire(wf.WORKFLOW, rec["target"], thief)
    assert new is not None and new.token > held["token"]
    return thief


def _steal_on_first_progress(res, ctx) -> dict:
    """Make another run take the lock when the phase first reports progress; the returned dict names the thief."""
    real_progress = ctx.progress
    stolen: dict = {}

    def progress(*a, **kw):
        if not stolen:
            stolen["by"] = _steal(res, ctx.rec)
        real_progress(*a, **kw)
    ctx.progress = progress
    return stolen


def _release(res, table):
    key = res.locks.key(wf.WORKFLOW, table)
    res.redis.delete(key)


def _remote_paths(settings, table) -> list[str]:
    """Every file under the table's folder on the edge node (full paths: each run has its own folder)."""
    return remote_files(settings, posixpath.join(settings.sftp.remote_dir, table))


def test_a_run_that_lost_its_lock_mid_transfer_commits_nothing_remotely(settings, res, guard_table):
    """Guard: the fencing check before the remote rename (connectors/sftp.py verify_and_commit)."""
    job_id = _exported(res, guard_table)
    try:
        with phase(res, job_id, "transfer") as ctx:
            final, tmp, uploaded = _uploaded(res, ctx)
            target = res.sftp()
            _steal(res, ctx.rec)
            with target.connect() as sess, pytest.raises(LockLost):
                verify_and_commit(sess, tmp, final, ctx.rec["outputs"]["sha256"], ctx.commit_check, uploaded)
        names = _remote_paths(settings, guard_table)
        assert final not in names and tmp in names
    finally:
        _release(res, guard_table)


def _upload_programs() -> list[str]:
    """The ssh/scp processes this test process started and that still run (an upload left writing)."""
    mine, found = str(os.getpid()), []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            name = (entry / "comm").read_text().strip()
        except (OSError, IndexError):
            continue
        if fields[1] == mine and name in ("ssh", "scp"):
            found.append(f"{entry.name} {name}")
    return found


@pytest.mark.parametrize("engine", ["openssh", "paramiko"])
def test_an_upload_stops_soon_after_its_lock_is_lost_and_leaves_no_temp_file(settings, res, guard_table, engine):
    """Guard: ``raise_if_lost`` in the transfer's progress (the renewer found the lock gone) and the temp file
    removed on LockLost.  Without it a run failed meanwhile (by the stall check, or a fail-over that lost the lock
    key) keeps uploading beside the next run, and a worker stopped under it leaves the half-written temp file."""
    job_id = _exported(res, guard_table)
    size = Path(res.jobs.get(job_id)["outputs"]["local_path"]).stat().st_size
    whole = 30.0  # seconds the upload would take under the limit below
    slow = Resources(settings.model_copy(update={"sftp": settings.sftp.model_copy(update={
        "engine": engine, "rate_limit_mbps": size / whole / 1e6, "streams": 1})}), _redis=res.redis)
    try:
        with phase(slow, job_id, "transfer") as ctx:
            final, tmp = wf.remote_paths(slow, ctx.rec)
            stolen = _steal_on_first_progress(slow, ctx)
            started = time.monotonic()
            with pytest.raises(LockLost):
                wf.transfer_phase(ctx)
            took = time.monotonic() - started
        assert stolen, "the upload never reported progress"
        # The renewer ticks every lock.renew_every (2 s here); the next chunk's progress stops the upload.
        assert took < whole / 2, f"the upload went on for {took:.1f}s after its lock was taken"
        assert not _upload_programs(), _upload_programs()
        names = _remote_paths(settings, guard_table)
        assert final not in names and tmp not in names, names
        assert res.locks.holder(wf.WORKFLOW, guard_table) == stolen["by"]  # the thief's lock untouched
    finally:
        _release(res, guard_table)


def test_a_resuming_run_removes_the_temp_file_its_failed_predecessors_left(settings, res, guard_table):
    """Guard: ``remove_resumed_temps``.  A run failed with its temp file on the server and its failure cleanup
    never run (the worker ending it died, Redis and the server both away); the next run resumes its archive into
    the same folder and removes that temp file, and only that one."""
    first = _exported(res, guard_table)
    _, tmp = wf.remote_paths(res, res.jobs.get(first))
    other = posixpath.join(posixpath.dirname(tmp), ".someone-elses.part")
    for path in (tmp, other):
        assert ssh(settings, ["sh", "-c", 'mkdir -p "$(dirname "$1")" && printf half > "$1"', "-", path]).returncode == 0
    fail_job(res, first, "transfer", ConnectionFailed("cut mid-upload"), alert=False)  # no cleanup
    assert res.locks.holder(wf.WORKFLOW, guard_table) is None
    try:
        second = wf.submit(res, guard_table)["job_id"]
        rec = run_phases_inline(res, wf.DEFINITION, second)
        assert rec["state"] == "success" and rec["outputs"]["resumed_from"] == first, rec
        final, _ = wf.remote_paths(res, rec)
        names = _remote_paths(settings, guard_table)
        assert final in names and tmp not in names and other in names, names
    finally:
        _release(res, guard_table)
        ssh(settings, ["rm", "-f", other])


def test_a_run_that_lost_its_lock_mid_export_commits_no_archive(settings, res, guard_table):
    """Guard: the fencing check before the local rename (backup/edge_export.py export_to_file)."""
    job_id = wf.submit(res, guard_table)["job_id"]
    with phase(res, job_id, "lock") as ctx:
        wf.lock_phase(ctx)
    try:
        with phase(res, job_id, "export") as ctx:
            _steal_on_first_progress(res, ctx)  # the lock changes hands while the rows stream
            with pytest.raises(LockLost):
                wf.export_phase(ctx)
        folder = settings.path(settings.edge_export.export_dir) / guard_table / run_id(res.jobs.get(job_id)["created"], job_id)
        assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())
    finally:
        _release(res, guard_table)


def _flip_byte(path: Path, offset: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))


@contextlib.contextmanager
def _transfer_never_committed(settings, res, table, verify: str = "in-stream", archive_changed: bool = False):
    """A new job exported and uploaded to its temp name in its transfer phase: yields (ctx, final, tmp, Uploaded);
    afterwards neither the final nor the temp name may exist on the edge node.  ``archive_changed``: one byte
    of the local archive is flipped for the upload (after the export recorded its SHA-256), then flipped back."""
    job_id = _exported(res, table)
    try:
        with phase(res, job_id, "transfer") as ctx:
            local = Path(ctx.rec["outputs"]["local_path"])
            if archive_changed:
                _flip_byte(local)
            try:
                final, tmp, uploaded = _uploaded(res, ctx, verify)
            finally:
                if archive_changed:
                    _flip_byte(local)  # whole again for the next test
            yield ctx, final, tmp, uploaded
        names = _remote_paths(settings, table)
        assert final not in names and tmp not in names
    finally:
        _release(res, table)


def test_a_copy_corrupted_on_the_server_before_read_back_verification_is_never_committed(settings, res, guard_table):
    """Guard (sftp.verify: read-back): sha256sum of the temp file on the server (ChecksumMismatch), the temp removed.

    Read-back is the mode that sees a change made to the temp file on the server after it was written."""
    with _transfer_never_committed(settings, res, guard_table, "read-back") as (ctx, final, tmp, uploaded):
        # One byte flipped on the edge node, between the upload and the verification.
        flip = ssh(settings, ["python3", "-c", "import sys; f=open(sys.argv[1],'r+b'); f.seek(100); b=f.read(1); "
                              "f.seek(100); f.write(bytes([b[0]^1])); f.close()", tmp])
        assert flip.returncode == 0
        with res.sftp().connect() as sess, pytest.raises(ChecksumMismatch):
            verify_and_commit(sess, tmp, final, ctx.rec["outputs"]["sha256"], ctx.commit_check, uploaded)


def test_an_archive_changed_after_its_export_is_caught_by_the_servers_in_stream_hash(settings, res, guard_table):
    """Guard (sftp.verify: in-stream, the default): the server hashes what it writes; a byte of the local archive
    flipped after the export recorded its SHA-256 arrives as written, and the server's hash refuses it."""
    with _transfer_never_committed(settings, res, guard_table, archive_changed=True) as (ctx, final, tmp, uploaded):
        with res.sftp().connect() as sess, pytest.raises(ChecksumMismatch, match="remote sha256"):
            verify_and_commit(sess, tmp, final, ctx.rec["outputs"]["sha256"], ctx.commit_check, uploaded)


def test_a_temp_file_whose_size_changed_after_the_in_stream_hash_is_never_committed(settings, res, guard_table):
    """Guard: the size check of the in-stream path (the temp file must hold exactly the bytes the server hashed)."""
    with _transfer_never_committed(settings, res, guard_table) as (ctx, final, tmp, uploaded):
        assert ssh(settings, ["sh", "-c", 'printf x >> "$1"', "-", tmp]).returncode == 0
        with res.sftp().connect() as sess, pytest.raises(ChecksumMismatch, match="temp file holds"):
            verify_and_commit(sess, tmp, final, ctx.rec["outputs"]["sha256"], ctx.commit_check, uploaded)


def test_a_different_file_at_the_final_name_is_never_overwritten(settings, res, guard_table):
    """Guard: AlreadyExists when the final name holds other content."""
    job_id = _exported(res, guard_table)
    try:
        with phase(res, job_id, "transfer") as ctx:
            final, tmp = wf.remote_paths(res, ctx.rec)
            ssh(settings, ["mkdir", "-p", posixpath.dirname(final)])
            assert ssh(settings, ["sh", "-c", 'printf "someone else" > "$1"', "-", final]).returncode == 0
            with pytest.raises(AlreadyExists, match="exists with different content"):
                wf.transfer_phase(ctx)
        assert ssh(settings, ["cat", final]).stdout == "someone else"
    finally:
        _release(res, guard_table)


def test_a_phase_redelivered_past_the_limit_fails_for_good(settings, res, guard_table):
    """Guard: TooManyDeliveries (backup/runner.py), raised on the delivery past celery.max_deliveries."""
    job_id = wf.submit(res, guard_table)["job_id"]
    limit = settings.celery.max_deliveries
    try:
        for _ in range(limit + 1):  # the first delivery and `limit` redeliveries after lost workers
            with phase(res, job_id, "lock", attempt=1) as ctx:
                assert ctx.active
        with pytest.raises(TooManyDeliveries, match=f"redelivered {limit + 1} times"):
            with phase(res, job_id, "lock", attempt=1):
                pass
    finally:
        _release(res, guard_table)


def test_a_temp_file_the_failure_cleanup_could_not_reach_is_removed_by_the_next_run(settings, res, guard_table):
    """The backup server unreachable when a run fails: its .part stays, recorded; the next transfer removes it."""
    from base.errors import ConnectionFailed
    from backup.resources import Resources
    from backup.runner import fail_job

    first = _exported(res, guard_table)
    try:
        with phase(res, first, "transfer") as ctx:
            final, tmp, _ = _uploaded(res, ctx)
        # The failure cleanup runs while the server is unreachable (a port where nothing listens).
        away = Resources(settings.model_copy(update={"sftp": settings.sftp.model_copy(update={"port": 1})}),
                         _redis=res.redis)
        fail_job(away, first, "transfer", ConnectionFailed("edge node away"),
                 cleanup=lambda r: wf.discard_remote_temp(away, r))
        assert tmp in _remote_paths(settings, guard_table)
        res.alerter.success(wf.WORKFLOW, guard_table)
        second = _exported(res, guard_table)
        with phase(res, second, "transfer") as ctx:
            _, second_tmp = wf.remote_paths(res, ctx.rec)
            wf.transfer_phase(ctx)
        names = _remote_paths(settings, guard_table)  # other tests of this module leave their own temp files
        assert tmp not in names and second_tmp not in names
        assert not res.redis.exists(wf._leftovers_key(res, guard_table))
    finally:
        _release(res, guard_table)


def test_a_transfer_that_loses_its_lock_leaves_neither_archive_nor_temp(settings, res, guard_table):
    """A holder paused past its TTL wakes up, finishes its upload, is refused at the commit: it removes its temp."""
    job_id = _exported(res, guard_table)
    try:
        with phase(res, job_id, "transfer") as ctx:
            final, tmp = wf.remote_paths(res, ctx.rec)
            stolen = _steal_on_first_progress(res, ctx)
            with pytest.raises(LockLost):
                wf.transfer_phase(ctx)
        assert stolen
        names = _remote_paths(settings, guard_table)
        assert final not in names and tmp not in names
    finally:
        _release(res, guard_table)
