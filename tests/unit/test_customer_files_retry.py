"""customer-files copies that failed for a transient reason are retried within ``retry.budget``; fatal ones are not.

The engine's per-file ``retryable`` verdict (``backup.copy_engine``) on local folders, then the copy phase's
decision (``backup.customer_files.copy_customer``) run in this process as the Celery task would run it, attempt
after attempt, against the session's Redis under a key prefix of its own.  A transient failure is a
``ConnectionResetError`` raised by the secondary's writes (what a dropped SSH connection raises); the real
outage mid-copy, on a worker with sshd behind a relay, is in tests/integration/test_retry_budget.py.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
import uuid

import pytest
import yaml

from backup import customer_files as cf
from backup.copy_engine import Destination, copy_file
from backup.jobs import phase_entry
from backup.resources import Resources
from backup.runner import phase
from base.errors import AuthFailed, ConnectionFailed, LockLost, RetryableError
from config.settings import Settings, load_settings
from storage.local import LocalBackend
from tests.conftest import TEST_CONFIG
from tests.unit.test_customer_files_copy import CorruptingLocal  # damages what it stores: a copy that does not verify


# -- the engine's verdict ----------------------------------------------------------

def _item(tmp_path, data: bytes = b"a;1\nb;2\n"):
    src = tmp_path / "src" / "acme"
    src.mkdir(parents=True)
    (src / "traffic_1.csv").write_bytes(data)
    st = (src / "traffic_1.csv").stat()
    item = {"customer": "acme", "domain": "traffic", "source": 0, "path": str(src / "traffic_1.csv"),
            "size": st.st_size, "mtime": st.st_mtime}
    dests = [Destination("primary", str(tmp_path / "primary")), Destination("secondary", str(tmp_path / "edge"))]
    for dest in dests:
        dest.open(Settings())
    return item, dests


class ResettingLocal(LocalBackend):
    """A destination whose every write is cut like a dropped connection."""

    def write_temp(self, path, chunks, *, overwrite=False, looked=False):
        raise ConnectionResetError(104, "Connection reset by peer")


def test_a_success_has_no_retry_verdict(tmp_path):
    item, dests = _item(tmp_path)
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "copied" and "retryable" not in result


@pytest.mark.parametrize("case", ["reset while writing", "destination down (connection)", "copy did not verify"])
def test_transient_failures_are_retryable(tmp_path, case):
    item, dests = _item(tmp_path)
    if case == "reset while writing":
        dests[1].backend = ResettingLocal()
    elif case == "destination down (connection)":
        dests[1].fail(ConnectionFailed("ssh edge: Connection refused"))
    else:
        dests[1].backend = CorruptingLocal()
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "failed" and result["retryable"] is True, result["error"]


@pytest.mark.parametrize("case", ["different file at the name", "source vanished", "source changed",
                                  "destination refused our key", "fatal beside transient"])
def test_fatal_failures_are_not(tmp_path, case):
    item, dests = _item(tmp_path)
    if case in ("different file at the name", "fatal beside transient"):
        (tmp_path / "primary" / "traffic").mkdir(parents=True)
        (tmp_path / "primary" / "traffic" / "traffic_1.csv").write_bytes(b"somebody else's\n")
        if case == "fatal beside transient":
            dests[1].backend = ResettingLocal()
    elif case == "source vanished":
        (tmp_path / "src" / "acme" / "traffic_1.csv").unlink()
    elif case == "source changed":
        item["mtime"] -= 10
    else:
        dests[1].backend = None  # as Destination.open leaves it when the server refused the login
        dests[1].down, dests[1].down_retryable = AuthFailed("ssh edge: key refused").one_line(), False
    result = copy_file(item, LocalBackend(), dests, lambda n: None)
    assert result["status"] == "failed" and result["retryable"] is False, result["error"]


# -- the copy phase's decision, attempt after attempt --------------------------------

@pytest.fixture
def run(tmp_path, redis_client, monkeypatch):
    """A customer with six files, a local primary and a secondary whose writes fail while ``outage["on"]``."""
    src = tmp_path / "src" / "acme"
    src.mkdir(parents=True)
    old = time.time() - 3600
    files = {}
    for i in range(6):
        data = f"{i};{'x' * 100 * i}\n".encode() * (i + 1)
        (src / f"traffic_{i}.csv").write_bytes(data)
        files[f"traffic_{i}.csv"] = data
    for p in src.iterdir():
        os.utime(p, (old, old))
    secondary = tmp_path / "edge"
    outage = {"on": True, "writes": 0}
    real = LocalBackend.write_temp

    def write_temp(self, path, chunks, *, overwrite=False, looked=False):
        if str(path).startswith(str(secondary)):
            outage["writes"] += 1
            if outage["on"]:
                raise ConnectionResetError(104, "Connection reset by peer")
        return real(self, path, chunks, overwrite=overwrite, looked=looked)
    monkeypatch.setattr(LocalBackend, "write_temp", write_temp)

    def make(retry: dict):
        config = copy.deepcopy(TEST_CONFIG)
        config["redis"]["key_prefix"] = f"cfretry{uuid.uuid4().hex[:8]}"  # keys, lock and ledger of this test only
        config["retry"] = retry
        config["customer_files"].update(
            source_dirs=[str(tmp_path / "src")], settle_seconds=0, manifest_dir=str(tmp_path / "manifests"),
            customers={"acme": {"primary": str(tmp_path / "primary"), "secondary": str(secondary)}},
            after_backup="keep")
        path = tmp_path / f"cfg-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(config))
        res = Resources(load_settings(path), _redis=redis_client)
        job_id = uuid.uuid4().hex
        cf.submit(res, job_id=job_id)
        for name in ("lock", "discover"):
            with phase(res, job_id, name) as ctx:
                cf.DEFINITION.phase(name).run(ctx)
        return res, job_id
    yield make, outage, files, tmp_path
    for key in redis_client.scan_iter("cfretry*"):
        redis_client.delete(key)


def attempt(res, job_id: str, n: int) -> dict:
    """Attempt ``n`` of the copy task (``attempt`` as Celery's retries + 1)."""
    with phase(res, job_id, "copy:acme", attempt=n) as ctx:
        assert ctx.active
        return cf.copy_customer(ctx, "acme")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_transient_failure_is_retried_and_the_retry_copies_each_file_once(run):
    make, outage, files, tmp = run
    res, job_id = make({"budget": 60, "backoff": 1, "backoff_max": 2})
    with pytest.raises(RetryableError, match="6 file\\(s\\) failed for a transient reason"):
        attempt(res, job_id, 1)
    entry = phase_entry(res.jobs.get(job_id), "copy:acme")
    assert entry["retry_since"] and "Connection reset" in entry["last_error"]
    assert cf.copy_retry_since(res.jobs.get(job_id), "acme") == entry["retry_since"]
    primary = {p.name: p.stat().st_ino for p in (tmp / "primary" / "traffic").iterdir()}
    assert sorted(primary) == sorted(files)  # the primary was copied by the first attempt
    outage["on"] = False
    out = attempt(res, job_id, 2)
    assert (out["copied"], out["failed"]) == (6, 0)
    # Each file written once to each destination: the primary's copies were verified, not written again.
    assert {p.name: p.stat().st_ino for p in (tmp / "primary" / "traffic").iterdir()} == primary
    assert {p.name: _sha(p.read_bytes()) for p in (tmp / "edge" / "traffic").iterdir()} == \
        {n: _sha(d) for n, d in files.items()}
    rows = cf.manifest_rows(res, res.jobs.get(job_id))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"copied"} and {r["error"] for r in rows} == {None}
    assert phase_entry(res.jobs.get(job_id), "copy:acme")["state"] == "success"


def test_transient_failures_past_the_budget_fail_the_files_as_data(run):
    make, outage, files, tmp = run
    res, job_id = make({"budget": 60, "max_retries": 1, "backoff": 1, "backoff_max": 2})
    with pytest.raises(RetryableError):
        attempt(res, job_id, 1)
    out = attempt(res, job_id, 2)  # the last retry the policy allows: still down
    assert (out["copied"], out["failed"]) == (0, 6)
    rows = cf.manifest_rows(res, res.jobs.get(job_id))
    assert all(r["status"] == "failed" and "ConnectionFailed" in r["error"]
               and r["error"].endswith("(gave up after 1 retries (retry.max_retries))") for r in rows), rows
    entry = phase_entry(res.jobs.get(job_id), "copy:acme")
    assert entry["state"] == "failed" and "6 transient failure(s): gave up after 1 retries" in entry["note"]
    assert not (tmp / "edge" / "traffic").exists() or list((tmp / "edge" / "traffic").iterdir()) == []


def test_a_fatal_failure_is_not_retried(run):
    make, outage, files, tmp = run
    outage["on"] = False
    (tmp / "edge" / "traffic").mkdir(parents=True)
    (tmp / "edge" / "traffic" / "traffic_0.csv").write_bytes(b"somebody else's\n")
    res, job_id = make({"budget": 60, "backoff": 1, "backoff_max": 2})
    out = attempt(res, job_id, 1)  # no RetryableError: the one failure is data at once
    assert (out["copied"], out["failed"]) == (5, 1)
    assert "retry_since" not in phase_entry(res.jobs.get(job_id), "copy:acme")


def test_the_budget_clock_restarts_only_after_an_attempt_that_copied_something(run):
    make, outage, files, tmp = run
    res, job_id = make({"budget": 60, "backoff": 1, "backoff_max": 2})
    with pytest.raises(RetryableError):
        attempt(res, job_id, 1)  # the primary was copied: the clock starts now
    first = phase_entry(res.jobs.get(job_id), "copy:acme")["retry_since"]
    with pytest.raises(RetryableError):
        attempt(res, job_id, 2)  # nothing verified (the primary copies were present): the clock stays
    assert phase_entry(res.jobs.get(job_id), "copy:acme")["retry_since"] == first


def test_a_retry_that_lost_its_lock_copies_nothing(run):
    """Fence: a retried attempt checks the lock before each batch, as the first attempt does."""
    make, outage, files, tmp = run
    res, job_id = make({"budget": 60, "backoff": 1, "backoff_max": 2})
    with pytest.raises(RetryableError):
        attempt(res, job_id, 1)
    held = res.jobs.get(job_id)["lock"]
    res.redis.delete(held["key"])  # the lock expired while the retry waited, and a newer run took it
    new, _ = res.locks.acquire(cf.WORKFLOW, cf.TARGET, f"thief-{job_id}")
    assert new is not None and new.token > held["token"]
    outage["on"] = False
    writes = outage["writes"]
    with pytest.raises(LockLost):
        attempt(res, job_id, 2)
    assert outage["writes"] == writes
    assert not (tmp / "edge" / "traffic").exists() or list((tmp / "edge" / "traffic").iterdir()) == []
