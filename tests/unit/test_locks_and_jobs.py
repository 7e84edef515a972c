"""Locks with fencing and job records, against the real Redis (database of the test session)."""

from __future__ import annotations

import time

import pytest

from base.errors import LockLost, NotFound
from backup.jobs import JobStore
from backup.locks import LockManager, Renewer


@pytest.fixture
def locks(redis_client):
    return LockManager(redis_client, f"unit{time.monotonic_ns()}", ttl=2)


def test_acquire_then_skip_names_holder(locks):
    held, holder = locks.acquire("wf", "db.t", "job-a")
    assert held and holder is None and held.token == 1
    again, holder = locks.acquire("wf", "db.t", "job-b")
    assert again is None and holder == "job-a"
    assert locks.holder("wf", "db.t") == "job-a"


def test_tokens_grow_and_old_holder_is_fenced(locks, redis_client):
    a, _ = locks.acquire("wf", "t", "a")
    redis_client.delete(a.key)  # as if it expired
    b, _ = locks.acquire("wf", "t", "b")
    assert b.token > a.token
    with pytest.raises(LockLost):
        locks.check(a)
    assert not locks.release(a), "an old holder must not release the new holder's lock"
    assert locks.holder("wf", "t") == "b"
    locks.check(b)
    assert locks.release(b) and locks.holder("wf", "t") is None


def test_expired_lock_retaken_only_if_nobody_else_got_one(locks, redis_client):
    a, _ = locks.acquire("wf", "t", "a")
    redis_client.delete(a.key)
    locks.renew(a)  # nobody was granted a newer token: the holder may take it back
    assert locks.holder("wf", "t") == "a"


def test_lock_expires_without_renewal(locks):
    a, _ = locks.acquire("wf", "t", "a")
    deadline = time.monotonic() + 5
    while locks.holder("wf", "t") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert locks.holder("wf", "t") is None
    b, _ = locks.acquire("wf", "t", "b")
    assert b is not None


@pytest.mark.clock  # a renewal delayed past the 2 s TTL by a busy machine would lose the lock
def test_renewer_keeps_lock_past_ttl(locks):
    a, _ = locks.acquire("wf", "t", "a")
    with Renewer(locks, a, every=0.5) as r:
        time.sleep(3)  # longer than the 2 s TTL: only renewal keeps it
        r.check()
    assert locks.holder("wf", "t") == "a"


def test_job_record_lifecycle_and_fenced_write(locks, redis_client):
    jobs = JobStore(redis_client, locks.prefix)
    rec = jobs.create("j1", "wf", "db.t", {"table": "db.t"}, ["lock", "work"])
    assert rec["state"] == "queued" and [p["name"] for p in rec["phases"]] == ["lock", "work"]
    assert jobs.create("j1", "wf", "db.t", {}, ["x"])["phases"][0]["name"] == "lock", "create is idempotent"
    held, _ = locks.acquire("wf", "db.t", "j1")
    jobs.update("j1", lambda r: r["outputs"].update(rows=5), fence=held)
    assert jobs.get("j1")["outputs"]["rows"] == 5
    redis_client.delete(held.key)
    locks.acquire("wf", "db.t", "j2")
    with pytest.raises(LockLost):
        jobs.update("j1", lambda r: r["outputs"].update(rows=6), fence=held)
    assert jobs.get("j1")["outputs"]["rows"] == 5, "a fenced-off write must not land"
    with pytest.raises(NotFound):
        jobs.get("missing")
    assert jobs.recent(5)[0]["job_id"] == "j1"
    assert jobs.last("wf", "db.t")["job_id"] == "j1"


def test_terminal_write_frees_the_lock_in_the_same_transaction(locks, redis_client):
    jobs = JobStore(redis_client, locks.prefix)
    jobs.create("r1", "wf", "db.r", {}, ["lock"])
    held, _ = locks.acquire("wf", "db.r", "r1")
    rec = jobs.update("r1", lambda r: r.update(state="success"), fence=held, release=held)
    assert rec["state"] == "success" and jobs.get("r1")["state"] == "success"
    assert locks.holder("wf", "db.r") is None, "the terminal write released the lock"


@pytest.mark.parametrize("key_lost", [False, True])
def test_a_renewal_after_the_terminal_write_never_takes_the_lock_again(locks, redis_client, key_lost):
    """Found by the fault campaign (restore-edge-export, Redis restarted): the lock key was lost across the restart,
    the job failed at its next fenced write, and its renewer, blocked in the outage when the phase ended, renewed
    afterwards: nobody had been granted a newer token, so the renewal took the lock again, for a whole TTL after the
    job had ended, and the next run was skipped.  The terminal write retires the token: a late renewal is refused and
    the next run takes the lock."""
    jobs = JobStore(redis_client, locks.prefix)
    jobs.create("z1", "wf", "db.z", {}, ["lock"])
    held, _ = locks.acquire("wf", "db.z", "z1")
    if key_lost:
        redis_client.delete(held.key)
    jobs.update("z1", lambda r: r.update(state="failed"), release=held)
    with pytest.raises(LockLost):
        locks.renew(held)
    assert locks.holder("wf", "db.z") is None
    nxt, holder = locks.acquire("wf", "db.z", "z2")
    assert nxt is not None and holder is None and nxt.token > held.token


def test_release_never_frees_a_lock_taken_over_by_another_job(locks, redis_client):
    jobs = JobStore(redis_client, locks.prefix)
    jobs.create("r2", "wf", "db.s", {}, ["lock"])
    old, _ = locks.acquire("wf", "db.s", "r2")
    redis_client.delete(old.key)  # expired ...
    new, _ = locks.acquire("wf", "db.s", "r3")  # ... and taken by the next run
    rec = jobs.update("r2", lambda r: r.update(state="failed"), release=old)
    assert rec["state"] == "failed"
    assert locks.holder("wf", "db.s") == "r3" and new.token > old.token


def test_a_take_found_held_by_the_same_job_is_its_own_lost_reply(locks):
    """redis-py sends the script again after a dropped connection: the second send finds the job's own take."""
    held, _ = locks.acquire("wf", "own", "job-a")
    again, holder = locks.acquire("wf", "own", "job-a")
    assert again == held and holder is None
    assert locks.acquire("wf", "own", "job-b") == (None, "job-a")


def test_with_wait_replicas_a_take_or_check_no_replica_acknowledged_does_not_count(redis_client):
    """The session's Redis has no replica: WAIT 1 returns 0 (the fail-over itself: tests/integration/test_redis_sentinel.py)."""
    from base.errors import ConnectionFailed, LockRenewalFailed

    prefix = f"unit{time.monotonic_ns()}"
    plain = LockManager(redis_client, prefix, ttl=5)
    waiting = LockManager(redis_client, prefix, ttl=5, wait_replicas=1, wait_timeout_ms=20)
    with pytest.raises(ConnectionFailed, match=r"only 0 of 1 replica\(s\) acknowledged fencing token 1 within 20 ms"):
        waiting.acquire("wf", "t", "job-a")
    assert waiting.holder("wf", "t") is None  # given back
    held, _ = plain.acquire("wf", "t", "job-b")
    assert held.token == 2  # the counter never goes back
    with pytest.raises(LockRenewalFailed, match="acknowledged the fencing check"):
        waiting.check(held)
    waiting.renew(held)  # the periodic renewal does not wait
    with pytest.raises(ConnectionFailed, match="acknowledged the fence move"):
        waiting.revoke(held)


def test_a_job_failed_with_lock_lost_still_frees_the_lock_its_renewer_took_back(res, redis_client):
    """The campaign's Redis-restart trial again, through ``fail_job``: the job's lock key expired across the restart, its
    fenced write was refused (LockLost), its renewer took the key back (nobody had a newer token), then the job
    failed.  The failure's terminal write frees that key and retires the token; a lock another run was granted in
    between is left alone (the other test)."""
    from backup.runner import fail_job

    jobs, locks = res.jobs, res.locks
    job_id = f"ll{time.monotonic_ns()}"
    jobs.create(job_id, "wf", "db.ll", {}, ["lock"])
    held, _ = locks.acquire("wf", "db.ll", job_id)
    jobs.update(job_id, lambda r: r.update(lock=held.as_dict(), state="running", phase="lock"))
    redis_client.delete(held.key)  # expired across the restart
    locks.renew(held)  # the renewer takes it back: nobody was granted a newer token
    assert locks.holder("wf", "db.ll") == job_id
    fail_job(res, job_id, "lock", LockLost("status write refused"), alert=False)
    assert jobs.get(job_id)["state"] == "failed"
    assert locks.holder("wf", "db.ll") is None, "the failed job's lock outlived it: the next run is skipped"
    with pytest.raises(LockLost):
        locks.renew(held)


def test_a_job_failed_with_lock_lost_leaves_the_lock_another_run_holds(res, redis_client):
    from backup.runner import fail_job

    jobs, locks = res.jobs, res.locks
    job_id = f"lo{time.monotonic_ns()}"
    jobs.create(job_id, "wf", "db.lo", {}, ["lock"])
    held, _ = locks.acquire("wf", "db.lo", job_id)
    jobs.update(job_id, lambda r: r.update(lock=held.as_dict(), state="running", phase="lock"))
    redis_client.delete(held.key)
    other, _ = locks.acquire("wf", "db.lo", "the-next-run")
    fail_job(res, job_id, "lock", LockLost("taken over"), alert=False)
    assert locks.holder("wf", "db.lo") == "the-next-run" and other.token > held.token
    locks.check(other)  # the next run can still commit
