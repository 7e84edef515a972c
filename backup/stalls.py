"""The stall check: no job stays ``queued`` or ``running`` forever.

Run by beat every ``stall.check_every`` seconds (task ``backup.stall_check``)
and by ``backupctl stalls``.  It reads the index of non-terminal jobs
(``JobStore.active``) and fails loudly, once, each job that stopped moving,
with the reason in the record (``Stalled: …``):

* **orphaned**: queued or running, its lock not held (expired, never taken, or
  taken by another run), no message carrying the job anywhere in the broker
  (the queues, or reserved unacknowledged by a worker: a retry waiting for its
  countdown and a message of a dead worker waiting for redelivery are both
  there), and no write to its record for ``stall.orphan_after`` seconds.  This
  is what is left when a message was lost (a broker that lost its newest
  writes, the entry task's window between claiming the chain and sending it).
* **silent**: running with a live lock, but no write to its record for
  ``stall.max_silence`` seconds (default the hard time limit + 5 minutes,
  longer than any phase may run): a hung phase whose lock renewal thread
  lives on.  Its lock's fencing counter is moved on first, so the hung
  process can no longer renew or commit anything if it wakes up.
* **ending left half-done**: a failure was claimed (``ending``) but its worker
  died before the terminal write; after ``stall.ending_grace`` the check
  completes it, alert included.

Failing goes through ``runner.fail_job``, so the alert is sent once per
episode and a job that moved on meanwhile (its next phase started) is left
alone.  Cost: one ZRANGE, one GET per active job, and one scan of the broker's
queues and unacknowledged hash (LRANGE/HVALS) when an orphan candidate exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import redis

from base.errors import ConnectionFailed, Stalled
from backup.jobs import phase_entry
from backup.locks import Held
from backup.resources import Resources
from backup.runner import end_unsuccessfully, fail_job

log = logging.getLogger(__name__)

# kombu's Redis transport: a queue is a list named like the queue, one more per priority step
# (<queue>\x06\x16<priority>), and reserved messages wait in the hash "unacked" until acknowledged.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_UNACKED = "unacked"


def broker_messages(client: redis.Redis, queues: Iterable[str]) -> list[bytes]:
    """Every message the broker holds for ``queues``: queued, and reserved but not acknowledged."""
    keys = []
    for q in queues:
        keys += [q] + [f"{q}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS if p]
    try:
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.lrange(k, 0, -1)
        pipe.hvals(_UNACKED)
        found = pipe.execute()
    except redis.RedisError as e:
        raise ConnectionFailed(f"read broker queues: {e}") from e
    return [m for batch in found for m in batch]


def _lock_is_ours(res: Resources, rec: dict) -> bool:
    if not rec.get("lock"):
        return False
    held = Held.from_dict(rec["lock"])
    try:
        return res.redis.get(held.key) == held.value.encode()
    except redis.RedisError as e:
        raise ConnectionFailed(f"read lock {held.key}: {e}") from e


def stall_reason(res: Resources, rec: dict, now: float, carried: Callable[[str], bool]) -> str | None:
    """Why ``rec`` counts as stalled at ``now``, or None; ``carried(job_id)`` says if the broker holds a message of it."""
    s = res.settings
    quiet = now - rec["updated"]
    ending = rec.get("ending")
    if ending:
        if now - ending.get("claimed", rec["updated"]) > s.stall.ending_grace:
            return (f"its failure in {ending.get('phase')} was claimed {now - ending['claimed']:.0f}s ago and "
                    f"never completed (the worker ending it died)")
        return None
    silence = s.stall.max_silence or s.celery.task_time_limit + 300
    if _lock_is_ours(res, rec):
        if rec["state"] == "running" and quiet > silence:
            return (f"phase {rec.get('phase')} has written nothing for {quiet:.0f}s (limit stall.max_silence "
                    f"{silence}s) while its lock is still renewed: the phase hangs")
        return None
    if quiet > s.stall.orphan_after and not carried(rec["job_id"]):
        where = f"in phase {rec.get('phase')}" if rec.get("phase") else "before its first phase"
        return (f"{rec['state']} {where}, its lock not held and no message for it in the broker for "
                f"{quiet:.0f}s (limit stall.orphan_after {s.stall.orphan_after}s): nothing will move it again")
    return None


def check_stalls(res: Resources, queues: Iterable[str], cleanup_for: Callable[[str], Callable[[dict], None] | None]
                 = lambda workflow: None, now: float | None = None) -> list[dict]:
    """Fail every stalled job once; returns ``[{job_id, workflow, target, reason, state}]`` of those acted on."""
    now = time.time() if now is None else now
    messages: list[bytes] | None = None

    def carried(job_id: str) -> bool:
        nonlocal messages
        if messages is None:  # read once per check, and only when some job needs it
            messages = broker_messages(res.redis, queues)
        needle = job_id.encode()
        return any(needle in m for m in messages)

    acted = []
    for rec in res.jobs.active():
        reason = stall_reason(res, rec, now, carried)
        if reason is None:
            continue
        log.error("job %s (%s %s) stalled: %s", rec["job_id"], rec["workflow"], rec["target"], reason)
        final = fail_stalled(res, rec, reason, cleanup_for(rec["workflow"]))
        acted.append({"job_id": rec["job_id"], "workflow": rec["workflow"], "target": rec["target"],
                      "reason": reason, "state": final["state"]})
    return acted


def fail_stalled(res: Resources, rec: dict, reason: str, cleanup: Callable[[dict], None] | None = None) -> dict:
    """Fail one stalled job loudly; a hung holder is fenced out first so it can commit nothing afterwards."""
    held = Held.from_dict(rec["lock"]) if rec.get("lock") else None
    if held is not None:
        res.locks.revoke(held)
    ending = rec.get("ending")
    if ending:  # complete the claimed failure as its claimer would have
        error = f"{ending.get('error')} (completed by the stall check: {reason})"

        def change(r):
            r.update(state="failed", error=error, finished=r["updated"])
            if ending.get("phase"):
                r["phase"] = ending["phase"]
                phase_entry(r, ending["phase"]).update(state="failed", finished=r["updated"], error=error)
        return end_unsuccessfully(res, rec, change, error, status=ending.get("status") or "FAILED",
                                  claimed=True)
    return fail_job(res, rec["job_id"], rec.get("phase"), Stalled(reason), cleanup=cleanup)
