"""Stale deliveries do nothing, alerts come only from the delivery that fails the job, and no job stays running.

The audit's case (issue "Faults with figures"): after a broker outage the restored
``transfer`` of a job ran beside its ``cleanup``; cleanup deleted the archive, the
stale transfer failed with NotFound and alerted, although the job then succeeded.
These tests drive that race with the real edge-export phases on the local
platform, and the stall check against records, locks and broker queues in Redis.
"""

from __future__ import annotations

import time
import uuid

import pytest

from backup import edge_export as wf
from base.errors import LockLost, NotFound
from backup.runner import fail_job, phase
from tests.helpers import new_sample_table, sink_counts, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stale_table(platform, settings):
    return new_sample_table(settings, "traffic_stale_delivery", rows=2000)


def _run(res, job_id, name):
    with phase(res, job_id, name) as ctx:
        assert ctx.active, f"{name}: {ctx.stale or ctx.rec['state']}"
        return wf.DEFINITION.phase(name).run(ctx)


def test_stale_transfer_racing_cleanup_neither_fails_nor_alerts_the_successful_job(settings, res, stale_table):
    res.alerter.success(wf.WORKFLOW, stale_table)
    job_id = wf.submit(res, stale_table)["job_id"]
    for name in ("lock", "export"):
        _run(res, job_id, name)
    mails0, tickets0 = sink_counts(settings)
    # The restored transfer message starts while the first delivery still runs: not stale yet, so its body runs ...
    with phase(res, job_id, "transfer") as first, phase(res, job_id, "transfer") as stale_ctx:
        assert stale_ctx.active and stale_ctx.stale is None
        wf.DEFINITION.phase("transfer").run(first)  # ... while the first one ends the phase
        _run(res, job_id, "cleanup")  # and the chain's cleanup deletes the local archive
        with pytest.raises(NotFound, match="local archive .* is missing") as failed:
            wf.transfer_phase(stale_ctx)
    # The chain's error handler gets the stale failure: nothing is failed and nothing alerts.
    after = fail_job(res, job_id, "transfer", failed.value, cleanup=lambda r: wf.discard_remote_temp(res, r))
    assert after["state"] == "running" and after["error"] is None and "ending" not in after
    assert not res.redis.exists(res.alerter._key(wf.WORKFLOW, stale_table))
    final = _run(res, job_id, "finish")
    rec = res.jobs.get(job_id)
    assert final["state"] == "success" and rec["state"] == "success" and rec["alert_sent"] is False
    assert sink_counts(settings) == (mails0, tickets0)
    # A later delivery of a passed phase is recognised at its start and counts no delivery.
    deliveries = {p["name"]: p["deliveries"] for p in rec["phases"]}
    with phase(res, job_id, "export") as ctx:
        assert not ctx.active
    assert {p["name"]: p["deliveries"] for p in res.jobs.get(job_id)["phases"]} == deliveries


def test_a_real_failure_still_alerts_once_and_a_stale_one_after_it_is_dropped(settings, res, stale_table):
    res.alerter.success(wf.WORKFLOW, stale_table)
    job_id = wf.submit(res, stale_table)["job_id"]
    _run(res, job_id, "lock")
    mails0, tickets0 = sink_counts(settings)
    rec = fail_job(res, job_id, "export", NotFound("no table x"))
    assert rec["state"] == "failed" and rec["alert_sent"] is True and "ending" not in rec
    again = fail_job(res, job_id, "lock", NotFound("a stale lock delivery failing late"))
    assert again["error"] == rec["error"]
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1)
    assert res.locks.holder(wf.WORKFLOW, stale_table) is None


def _transfer_ended(res, name: str, cleanup_started: bool) -> str:
    """An edge-export job whose lock, export and transfer ended, cleanup started or not; its id.  The local archive
    it names does not exist: a delivery that ran transfer again would fail on it, loudly."""
    job_id = uuid.uuid4().hex
    res.jobs.create(job_id, wf.WORKFLOW, f"mnaas_test.{name}_{job_id[:6]}", {}, wf.DEFINITION.phase_names)

    def ended(r):
        r["state"] = "running"
        for p in r["phases"]:
            if p["name"] in ("lock", "export", "transfer"):
                p.update(state="success", deliveries=1, attempts=1)
            if p["name"] == "cleanup" and cleanup_started:
                p.update(state="running", deliveries=1, attempts=1)
        r["outputs"]["local_path"] = "/nonexistent/archive.csv.gz"
    res.jobs.update(job_id, ended)
    return job_id


def test_worker_stops_the_chain_of_a_stale_delivery(settings, res, worker, celery_app):
    """A stale transfer delivered with its chain (as a restored message is) neither runs nor starts cleanup."""
    job_id = _transfer_ended(res, "stale_chain", cleanup_started=True)
    from celery import chain

    sig = chain(celery_app.signature("backup.edge_export.transfer", args=({"job_id": job_id},)),
                celery_app.signature("backup.edge_export.finish"))
    result = sig.apply_async()
    first = result.parent.get(timeout=60)
    assert first["stale"] == "phase cleanup has already started"
    # Celery sends a chain's next task before it stores the result, and records it as the result's child.
    assert not celery_app.AsyncResult(result.parent.id).children
    rec = res.jobs.get(job_id)
    finish = next(p for p in rec["phases"] if p["name"] == "finish")
    assert finish["deliveries"] == 0 and rec["state"] == "running"


def test_a_phase_delivered_again_after_it_ended_neither_runs_nor_continues_the_chain(settings, res, worker,
                                                                                     celery_app):
    """The fail-over run's duplicate export: a message restored between its task's return and its late ack arrives
    after the phase ended and before the next one started.  It must not run the phase again nor send the next."""
    job_id = _transfer_ended(res, "ended_twice", cleanup_started=False)
    # In-process first: the delivery is stale and writes nothing.
    with phase(res, job_id, "transfer") as ctx:
        assert not ctx.active and ctx.stale == "phase transfer has already ended (success)"
    # Celery's retry of an attempt that failed after the phase's end write (a driver that exited non-zero after
    # it): nothing runs, the chain goes on (not stale), once; a duplicate of that retry is stale again.
    with phase(res, job_id, "transfer", attempt=2) as ctx:
        assert not ctx.active and ctx.stale is None
    with phase(res, job_id, "transfer", attempt=2) as ctx:
        assert not ctx.active and ctx.stale == "phase transfer has already ended (success)"
    from celery import chain

    sig = chain(celery_app.signature("backup.edge_export.transfer", args=({"job_id": job_id},)),
                celery_app.signature("backup.edge_export.cleanup"))
    result = sig.apply_async()
    first = result.parent.get(timeout=60)
    assert first["stale"] == "phase transfer has already ended (success)"
    assert not celery_app.AsyncResult(result.parent.id).children  # the next phase was not sent
    rec = res.jobs.get(job_id)
    assert rec["state"] == "running" and rec["phase"] != "transfer"
    assert [(p["name"], p["state"], p["deliveries"]) for p in rec["phases"]] == [
        ("lock", "success", 1), ("export", "success", 1), ("transfer", "success", 1),
        ("cleanup", "pending", 0), ("finish", "pending", 0)]
    assert rec["phases"][2]["carried_on"] == 2


# -- the stall check ---------------------------------------------------------------------------------------------

@pytest.fixture
def sres(settings, redis_client):
    """Resources under a key prefix of their own: the check sees only this module's jobs, alerts and locks."""
    from backup.resources import Resources

    own = settings.model_copy(update={"redis": settings.redis.model_copy(update={"key_prefix": "mbstall"})})
    return Resources(own, _redis=redis_client)


def _running_job(res, target, workflow="stall-test", phases=("lock", "work", "finish"), updated_ago=0.0, lock=True):
    job_id = uuid.uuid4().hex
    res.jobs.create(job_id, workflow, target, {}, list(phases))
    held = None
    if lock:
        held, _ = res.locks.acquire(workflow, target, job_id)

    def run(r):
        r.update(state="running", phase="work")
        if held:
            r["lock"] = held.as_dict()
        for p in r["phases"]:
            if p["name"] == "work":
                p.update(state="running", deliveries=1, attempts=1)
    res.jobs.update(job_id, run)
    if updated_ago:
        raw = res.jobs.get(job_id)
        raw["updated"] -= updated_ago
        import json
        res.redis.set(res.jobs._key(job_id), json.dumps(raw))
    return job_id, held


def _check(res, now=None):
    from backup.stalls import check_stalls

    return {a["job_id"]: a for a in check_stalls(res, ("mbtest-stall-q",), now=now)}


def test_orphaned_job_fails_loudly_once_and_a_carried_one_is_left_alone(settings, sres, platform):
    target = f"t{uuid.uuid4().hex[:8]}"
    orphan, held = _running_job(sres, target, updated_ago=settings.stall.orphan_after + 5)
    sres.locks.release(held)  # the lock expired: nobody runs a phase of it
    carried, held2 = _running_job(sres, target + "b", updated_ago=settings.stall.orphan_after + 5)
    sres.locks.release(held2)
    # A message for the second job waits in a queue (as a retry or a next phase would).
    sres.redis.rpush("mbtest-stall-q", f'{{"headers": {{"root_id": "{carried}"}}}}')
    fresh, held3 = _running_job(sres, target + "c")  # lock held and renewed: alive
    mails0, tickets0 = sink_counts(settings)
    try:
        acted = _check(sres)
        again = _check(sres)
    finally:
        sres.redis.delete("mbtest-stall-q")
        sres.locks.release(held3)
    assert orphan in acted and carried not in acted and fresh not in acted
    rec = sres.jobs.get(orphan)
    assert rec["state"] == "failed" and rec["error"].startswith("Stalled: running in phase work")
    assert "no message for it in the broker" in rec["error"] and rec["alert_sent"] is True
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1)
    assert orphan not in [r["job_id"] for r in sres.jobs.active()]
    assert again == {}  # once: a terminal job is no longer looked at, the carried one still moves
    assert sres.jobs.get(carried)["state"] == "running"
    sres.jobs.update(carried, lambda r: r.update(state="success"))
    sres.alerter.success("stall-test", target)


def test_hung_phase_is_failed_and_fenced_out(settings, sres, platform):
    target = f"t{uuid.uuid4().hex[:8]}"
    silence = settings.stall.max_silence or settings.celery.task_time_limit + 300
    job_id, held = _running_job(sres, target, updated_ago=silence + 5)
    acted = _check(sres)
    assert "the phase hangs" in acted[job_id]["reason"]
    assert sres.jobs.get(job_id)["state"] == "failed"
    # The hung process wakes up: it can neither renew its lock nor take it back.
    with pytest.raises(LockLost):
        sres.locks.renew(held)
    assert sres.locks.holder("stall-test", target) is None
    sres.alerter.success("stall-test", target)


def test_a_failure_whose_worker_died_after_claiming_it_is_completed_with_its_alert(settings, sres, platform):
    from backup.runner import claim_ending

    target = f"t{uuid.uuid4().hex[:8]}"
    job_id, held = _running_job(sres, target)
    claimed = claim_ending(sres, job_id, "work", "FAILED", "NotFound: gone")
    assert claimed["ending"]["phase"] == "work"
    mails0, tickets0 = sink_counts(settings)
    assert job_id not in _check(sres)  # within the grace: the claimer may still finish
    later = time.time() + settings.stall.ending_grace + 5
    acted = _check(sres, now=later)
    assert "never completed" in acted[job_id]["reason"]
    rec = sres.jobs.get(job_id)
    assert rec["state"] == "failed" and rec["error"].startswith("NotFound: gone (completed by the stall check")
    assert rec["alert_sent"] is True and "ending" not in rec
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1)
    assert sres.locks.holder("stall-test", target) is None
    sres.alerter.success("stall-test", target)


def test_a_queued_job_whose_chain_was_never_sent_is_failed(settings, sres, platform):
    job_id = uuid.uuid4().hex
    sres.jobs.create(job_id, "stall-test", f"t{job_id[:8]}", {}, ["lock"])
    later = time.time() + settings.stall.orphan_after + 5
    acted = _check(sres, now=later)
    assert "queued before its first phase" in acted[job_id]["reason"]
    assert sres.jobs.get(job_id)["state"] == "failed"
    sres.alerter.success("stall-test", f"t{job_id[:8]}")


def test_beat_fires_the_stall_check(settings, celery_app):
    from config.schedule import STALL_CHECK_ENTRY

    entry = celery_app.conf.beat_schedule[STALL_CHECK_ENTRY]
    assert entry["task"] == "backup.stall_check"
    assert entry["schedule"].run_every.total_seconds() == settings.stall.check_every
    celery_app.loader.import_default_modules()  # the app's include list, as a worker imports it
    assert "backup.stall_check" in celery_app.tasks


def test_the_stall_check_task_runs_on_a_worker(settings, res, worker, celery_app):
    target = f"t{uuid.uuid4().hex[:8]}"
    orphan, held = _running_job(res, target, updated_ago=settings.stall.orphan_after + 5)
    res.locks.release(held)
    acted = celery_app.send_task("backup.stall_check").get(timeout=60)
    assert orphan in [a["job_id"] for a in acted]
    wait_until(lambda: res.jobs.get(orphan)["state"] == "failed", 10, "orphan failed")
    res.alerter.success("stall-test", target)


def test_an_alert_whose_sender_died_mid_send_is_sent_when_the_failure_is_completed(settings, sres, platform):
    from backup.runner import claim_ending

    target = f"t{uuid.uuid4().hex[:8]}"
    job_id, held = _running_job(sres, target)
    claim_ending(sres, job_id, "work", "FAILED", "NotFound: gone")
    # The dying worker had claimed the episode, and sent nothing.
    sres.redis.set(sres.alerter._key("stall-test", target), f"{job_id}:sending")
    mails0, tickets0 = sink_counts(settings)
    acted = _check(sres, now=time.time() + settings.stall.ending_grace + 5)
    assert job_id in acted
    rec = sres.jobs.get(job_id)
    assert rec["state"] == "failed" and rec["alert_sent"] is True and rec["alert"].get("ticket")
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1)
    assert sres.redis.get(sres.alerter._key("stall-test", target)) == f"{job_id}:sent".encode()
    sres.alerter.success("stall-test", target)
