"""Running one phase of a job: bookkeeping shared by every workflow.

``phase(res, job_id, name, attempt)`` is a context manager that marks the
phase running, counts deliveries (a phase redelivered after its worker died
more often than ``celery.max_deliveries`` fails for good, which ends any
redelivery loop), keeps the job's lock renewed while the phase runs, and
exposes ``commit_check`` (the fencing check before an irreversible step) and
``done`` (a fenced status write).  If the job is already terminal (skipped,
or failed by another phase), ``ctx.active`` is False and the phase does
nothing: that is how a skipped job's chain winds down.

A delivery of a phase that the job has already moved past (a later phase
started, the phase itself already ended, or the job is ending) is *stale*: a
message restored after a broker outage or a worker's death, arriving after the
chain went on without it.  It does nothing, does not continue the chain
(``ctx.stale``) and, if it fails anyway, its failure is dropped with a
warning: only a delivery of the phase the job is really in may fail the job.

Ending a job unsuccessfully is two writes around the alert: first a *claim*
(``ending``) made atomically only while the job is neither terminal, nor
ending, nor past the failing phase; then, by the claimer alone, the cleanup
and the alert; last the terminal write.  So an alert is sent only by the
delivery whose claim made the job fail, and a reader that sees ``failed``
sees the alert's outcome too.  A claimer that dies between the two writes
leaves ``ending`` behind; the stall check (``backup.stalls``) completes it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

from base.errors import BackupError, TooManyDeliveries, classify
from backup.jobs import TERMINAL, now, phase_entry
from backup.locks import Held, Renewer
from backup.metrics import record_metrics
from backup.resources import Resources

log = logging.getLogger(__name__)


def fan_out_group(name: str) -> str:
    """The group a phase belongs to: ``copy:acme`` and ``copy:zeta`` run side by side as ``copy``."""
    return name.split(":", 1)[0]


def moved_past(rec: dict, name: str) -> str | None:
    """Why a delivery of phase ``name`` is stale (the job is terminal, ending, or a later phase started), or None.

    Phases run in the order of ``rec["phases"]``; phases of one fan-out group
    (``copy:<customer>``) run side by side, so a sibling is never "later".
    """
    if rec["state"] in TERMINAL:
        return f"the job is already {rec['state']}"
    if rec.get("ending"):
        return f"the job is already ending ({rec['ending'].get('status')} claimed in {rec['ending'].get('phase')})"
    names = [p["name"] for p in rec["phases"]]
    if name not in names:
        return None
    group = fan_out_group(name)
    for p in rec["phases"][names.index(name) + 1:]:
        if fan_out_group(p["name"]) != group and (p["deliveries"] or p["state"] != "pending"):
            return f"phase {p['name']} has already started"
    return None


def already_ended(p: dict) -> str | None:
    """Why a new delivery of the phase entry ``p`` must not run it: the phase has already ended.

    A delivery that arrives after its phase ended and before the next phase
    started - the first delivery's message restored to the queue between the
    task's return and its late ack (a connection lost at that moment), or a
    duplicate of the message - would otherwise run the phase a second time
    beside the chain the first delivery continued (an export written twice, its
    record left ``running``).  Such a delivery (an attempt no later than the one
    that ended the phase) is stale, like one the job has moved past.  A later
    attempt - Celery's retry of an attempt that failed after its phase's end
    write - runs nothing either but continues the chain, once (``phase``).
    Only the start of a delivery asks this: a phase that fails after its own
    ``done`` (customer-files' flag) still fails its job.  Cost: a worker that
    died between a phase's end write and sending the next message leaves its
    job to the stall check, which fails it loudly.
    """
    if p["state"] in ENDED:
        return f"phase {p['name']} has already ended ({p['state']})"
    return None


#: the states of a phase that has ended (``failed`` without the job failing: a customer's copy)
ENDED = ("success", "failed")


class PhaseContext:
    """What a running phase may do with its job."""

    def __init__(self, res: Resources, rec: dict, name: str, active: bool, stale: str | None = None):
        self.res = res
        self.rec = rec
        self.job_id = rec["job_id"]
        self.name = name
        self.active = active
        #: why this delivery is stale (the job moved past this phase); such a delivery must not continue the chain
        self.stale = stale
        self.held: Held | None = Held.from_dict(rec["lock"]) if rec.get("lock") else None
        self.renewer: Renewer | None = None
        self._last_progress = 0.0
        self.on_progress: Callable[[dict], None] | None = None

    def commit_check(self) -> None:
        """Fencing check: raise LockLost unless this job still holds its lock."""
        if self.renewer:
            self.renewer.check()
        elif self.held:
            self.res.locks.check(self.held)

    def raise_if_lost(self) -> None:
        """Raise LockLost if the renewer already found the lock gone; no network, cheap enough for every chunk.

        A phase that streams for long calls it as it goes: whatever it would still write can never
        be committed (the commit is fenced), and a run failed meanwhile (the stall check, a fail-over
        that lost the lock key) must not keep writing beside the next run.
        """
        if self.renewer and self.renewer.lost:
            raise self.renewer.lost

    def done(self, outputs: dict | None = None, note: str | None = None, state: str = "success",
             keep_progress: bool = False) -> dict:
        """Record the phase as finished (fenced by the job's lock) and merge its outputs."""
        def change(rec):
            p = phase_entry(rec, self.name)
            p.update(state=state, finished=now(), error=None)
            if note:
                p["note"] = note
            rec["outputs"].update(outputs or {})
            if not keep_progress:
                rec["progress"].pop(self.name, None)
        self.rec = self.res.jobs.update(self.job_id, change, fence=self.held)
        return self.rec

    def progress(self, force: bool = False, **values) -> None:
        """Publish progress (rows, bytes, ...) at most once a second."""
        t = time.monotonic()
        if not force and t - self._last_progress < 1.0:
            return
        self._last_progress = t
        payload = {"phase": self.name, **values}

        def change(rec):
            rec["progress"][self.name] = values
        try:
            self.res.jobs.update(self.job_id, change)
        except BackupError as e:  # progress is best effort; never fail a copy over it
            log.warning("progress update failed: %s", e.one_line())
        if self.on_progress:
            self.on_progress(payload)


@contextmanager
def phase(res: Resources, job_id: str, name: str, attempt: int = 1) -> Iterator[PhaseContext]:
    """Run one phase of a job with bookkeeping, renewal and delivery counting."""
    max_deliveries = res.settings.celery.max_deliveries
    redelivered = {}
    stale = {}

    def start(rec):
        p = phase_entry(rec, name)
        stale.pop("why", None)  # a WATCH conflict runs this again on a fresh record
        stale.pop("carry_on", None)
        if rec["state"] in TERMINAL:
            return
        why = moved_past(rec, name)
        if not why and p["state"] in ENDED:
            if attempt > max(p["attempts"], p.get("carried_on") or 0):
                # A Celery retry of an attempt that failed after its phase had ended (a spark-submit driver that
                # wrote its end and then exited non-zero): the work is done, the chain is not sent yet. Once.
                p["carried_on"] = attempt
                stale["carry_on"] = True
                return
            why = already_ended(p)
        if why:
            stale["why"] = why
            return
        p["deliveries"] += 1
        # Deliveries beyond the attempts Celery knows about are redeliveries after a lost worker.
        redelivered["n"] = p["deliveries"] - attempt
        p.update(state="running", attempts=attempt, started=p["started"] or now(), error=None)
        rec.update(state="running", phase=name)

    rec = res.jobs.update(job_id, start)
    why = stale.get("why")
    active = rec["state"] not in TERMINAL and why is None and not stale.get("carry_on")
    ctx = PhaseContext(res, rec, name, active, stale=why)
    if why:
        log.warning("stale delivery of phase %s of job %s ignored: %s", name, job_id, why)
    if stale.get("carry_on"):
        log.warning("phase %s of job %s had already ended when its attempt %d started: the chain goes on "
                    "without running it again", name, job_id, attempt)
    if not active:
        yield ctx
        return
    if redelivered.get("n", 0) > max_deliveries:
        raise TooManyDeliveries(f"phase {name} of job {job_id} was redelivered {redelivered['n']} times "
                                f"(limit celery.max_deliveries={max_deliveries}); the worker keeps dying")
    if ctx.held:
        ctx.renewer = Renewer(res.locks, ctx.held, res.settings.lock.renew_every)
        with ctx.renewer:
            yield ctx
    else:
        yield ctx


def fail_job(res: Resources, job_id: str, phase_name: str | None, exc: BaseException,
             cleanup: Callable[[dict], None] | None = None, alert: bool = True) -> dict:
    """Record a final failure, alert once per episode (unless ``alert`` is False: a restore run by a drill,
    whose failure the drill reports) and release the lock; returns the record.

    Nothing happens (the record is returned as it is) when the failure comes
    from a stale delivery: the job already ended, is being ended by another
    delivery, or has moved past ``phase_name``.
    """
    err = classify(exc, phase_name or "job").one_line()

    def change(rec):
        rec.update(state="failed", error=err, finished=now())
        if phase_name:
            rec["phase"] = phase_name
            p = phase_entry(rec, phase_name)
            p.update(state="failed", finished=now(), error=err)

    claimed = claim_ending(res, job_id, phase_name, "FAILED", err)
    if claimed is None:
        return res.jobs.get(job_id)
    if cleanup:  # before the terminal write, like the alert: whoever sees "failed" sees its outcome too
        failed = copy.deepcopy(claimed)
        change(failed)
        try:
            cleanup(failed)
        except Exception as e:  # cleanup is best effort; the failure itself is what must be reported
            log.warning("cleanup after failure of %s failed: %s", job_id, e)
    current = res.jobs.get(job_id)
    # Released even after a LockLost: the terminal write deletes the lock key only if it is still this job's value and
    # retires the token only if nobody was granted a newer one, so a lock another run holds is left alone, and a key
    # this job's renewer took back after it was lost (expired across a Redis restart) does not outlive the job.
    held = Held.from_dict(current["lock"]) if current.get("lock") else None
    rec = end_unsuccessfully(res, current, change, err, release=held, claimed=True, alert=alert)
    log.error("job %s failed in %s: %s", job_id, phase_name, err)
    return rec


def claim_ending(res: Resources, job_id: str, phase_name: str | None, status: str, error: str,
                 fence: Held | None = None) -> dict | None:
    """Atomically mark the job as ending unsuccessfully; None if this delivery may not end it (stale).

    The claim is what entitles one delivery, and one only, to clean up, alert
    and write the terminal state.  It is refused when the job is terminal, is
    already ending, or has moved past ``phase_name`` (a later phase started).
    """
    refused = {}

    def claim(rec):
        refused.pop("why", None)
        why = moved_past(rec, phase_name) if phase_name else (
            f"the job is already {rec['state']}" if rec["state"] in TERMINAL else None)
        if why:
            refused["why"] = why
            return
        rec["ending"] = {"status": status, "phase": phase_name, "error": error, "claimed": now()}
    rec = res.jobs.update(job_id, claim, fence=fence)
    if "why" in refused:
        log.warning("failure of job %s in %s not recorded, the delivery is stale (%s): %s",
                    job_id, phase_name, refused["why"], error)
        return None
    return rec


def end_unsuccessfully(res: Resources, current: dict, change: Callable[[dict], None], error: str,
                       status: str = "FAILED", fence: Held | None = None, release: Held | None = None,
                       claimed: bool = False, alert: bool = True) -> dict:
    """Claim the ending (unless ``claimed``), alert once per episode, then one write that applies ``change``
    (failing the job), records the alert, drops the claim and frees the lock."""
    if not claimed:
        rec = claim_ending(res, current["job_id"], current.get("phase"), status, error, fence=fence)
        if rec is None:
            return res.jobs.get(current["job_id"])
        current = rec
    ending = copy.deepcopy(current)
    change(ending)
    sent = res.alerter.failure(ending, error, status=status) if alert and not current.get("alert_sent") else None

    def commit(rec):
        change(rec)
        rec.pop("ending", None)
        if sent is not None and rec["state"] == "failed":
            rec["alert_sent"] = sent["sent"]
            rec["alert"] = sent
    return res.jobs.update(current["job_id"], commit, fence=fence, release=release)


def take_lock(ctx: PhaseContext, workflow: str, target: str | None = None) -> dict:
    """The lock phase of every workflow: take the (workflow, target) lock or end the job as skipped.

    ``target`` defaults to the job's; a workflow that must never run beside
    another one's run (a restore beside the backup of the same target) names
    that workflow and its target, and so takes the very same lock.
    """
    res = ctx.res
    if ctx.held:  # redelivered after this job took the lock; the phase runner already renewed it
        ctx.done()
        return {"job_id": ctx.job_id, "state": "running", "lock_token": ctx.held.token}
    held, holder = res.locks.acquire(workflow, target or ctx.rec["target"], ctx.job_id)
    if held is None:
        reason = f"lock held by job {holder}"

        def skip(r):
            phase_entry(r, ctx.name).update(state="skipped", finished=r["updated"], note=reason)
            r.update(state="skipped", error=None, reason=reason, finished=r["updated"])
        res.jobs.update(ctx.job_id, skip)
        return {"job_id": ctx.job_id, "state": "skipped", "reason": reason}

    def take(r):
        r["lock"] = held.as_dict()
    res.jobs.update(ctx.job_id, take)
    ctx.held = held
    ctx.done({"lock_token": held.token})
    return {"job_id": ctx.job_id, "state": "running", "lock_token": held.token}


def finish_job(ctx: PhaseContext) -> dict:
    """Mark the job successful and release its lock in one fenced write, after ending any failure episode."""
    if ctx.renewer:
        ctx.renewer.stop()  # before the write that releases, so no renewal races it
        ctx.renewer = None
    # Ended before the commit so that a failure right after a visible success always alerts; if the
    # commit is then refused (lock lost), the cost is one extra alert, never a silent failure.
    ctx.res.alerter.success(ctx.rec["workflow"], ctx.rec["target"])

    def change(rec):
        p = phase_entry(rec, ctx.name)
        p.update(state="success", finished=now())
        rec.update(state="success", finished=now(), error=None)
    rec = ctx.res.jobs.update(ctx.job_id, change, fence=ctx.held, release=ctx.held)
    record_metrics(ctx.res, rec)
    return rec
