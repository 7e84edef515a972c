"""Job records in Redis: the status every run leaves behind (replaces the legacy status file).

One JSON document per run at ``<prefix>:job:<job_id>``::

    job_id, workflow, target, args, state (queued|running|success|failed|skipped),
    phase (current), phases [{name, state, attempts, deliveries, started, finished, error}],
    error, outputs {...}, progress {...}, alert_sent, created, updated, finished

plus ``<prefix>:jobs`` (a sorted set by creation time, for ``backupctl jobs``),
``<prefix>:active`` (the same for jobs not yet terminal, kept by every write:
what the stall check scans) and ``<prefix>:last:<workflow>:<target>`` (the
latest run of a target, for resume).
Records are readable by any service with Redis access; they never hold secrets.

Writes made while holding a lock go through ``update(..., fence=...)``: a
WATCH/MULTI transaction that also watches the lock key and aborts with
``LockLost`` if this run no longer holds it.  The write that makes a job
terminal also releases its lock (``release=...``) in the same transaction, and
everything a terminal record reports (alert sent, flag written, episode ended)
happens before it: a reader that sees the terminal state sees the whole end of
the run, and a run it starts next never finds the lock still held.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from base.errors import ConnectionFailed, LockLost, NotFound
from backup.locks import Held

STATES = ("queued", "running", "success", "failed", "skipped")
TERMINAL = ("success", "failed", "skipped")
RETENTION_SECONDS = 90 * 86400


def now() -> float:
    """Wall-clock time stamp used in records (seconds since the epoch)."""
    return round(time.time(), 3)


class JobStore:
    """Create, read and update job records."""

    def __init__(self, client: redis.Redis, prefix: str, outage_grace: float = 60.0):
        self.r = client
        self.prefix = prefix
        self.outage_grace = outage_grace

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    @property
    def _active_key(self) -> str:
        return f"{self.prefix}:active"

    def active(self, limit: int = 10_000) -> list[dict]:
        """Records of jobs that are not terminal (queued, running, ending), oldest first."""
        try:
            ids = self.r.zrange(self._active_key, 0, limit - 1)
        except redis.RedisError as e:
            raise ConnectionFailed(f"list active jobs: {e}") from e
        out = []
        for jid in ids:
            rec = self.find(jid.decode())
            if rec is None:  # expired record: nothing left to watch
                self.r.zrem(self._active_key, jid)
            elif rec["state"] not in TERMINAL:
                out.append(rec)
        return out

    def _last_key(self, workflow: str, target: str) -> str:
        return f"{self.prefix}:last:{workflow}:{target}"

    def create(self, job_id: str, workflow: str, target: str, args: dict, phases: list[str]) -> dict:
        """Create the record in state ``queued``; an existing record is returned unchanged."""
        rec = {
            "job_id": job_id, "workflow": workflow, "target": target, "args": args,
            "state": "queued", "phase": None,
            "phases": [{"name": p, "state": "pending", "attempts": 0, "deliveries": 0,
                        "started": None, "finished": None, "error": None} for p in phases],
            "error": None, "outputs": {}, "progress": {}, "alert_sent": False,
            "created": now(), "updated": now(), "finished": None,
        }
        try:
            created = self.r.set(self._key(job_id), json.dumps(rec), nx=True, ex=RETENTION_SECONDS)
            if not created:
                return self.get(job_id)
            pipe = self.r.pipeline()
            pipe.zadd(f"{self.prefix}:jobs", {job_id: rec["created"]})
            pipe.zadd(self._active_key, {job_id: rec["created"]})
            pipe.set(self._last_key(workflow, target), job_id, ex=RETENTION_SECONDS)
            pipe.execute()
        except redis.RedisError as e:
            raise ConnectionFailed(f"create job record {job_id}: {e}") from e
        return rec

    def get(self, job_id: str) -> dict:
        """The record, or NotFound."""
        try:
            raw = self.r.get(self._key(job_id))
        except redis.RedisError as e:
            raise ConnectionFailed(f"read job record {job_id}: {e}") from e
        if raw is None:
            raise NotFound(f"no job record {job_id!r}")
        return json.loads(raw)

    def find(self, job_id: str) -> dict | None:
        """The record, or None."""
        try:
            return self.get(job_id)
        except NotFound:
            return None

    def last(self, workflow: str, target: str, before: str | None = None) -> dict | None:
        """The latest run of a target other than ``before``."""
        jid = self.r.get(self._last_key(workflow, target))
        if jid and jid.decode() != before:
            return self.find(jid.decode())
        # The pointer was overwritten by the current run: scan recent records of this target instead.
        for rec in self.recent(200):
            if rec["workflow"] == workflow and rec["target"] == target and rec["job_id"] != before:
                return rec
        return None

    def history(self, workflow: str, target: str, page: int = 500) -> Iterator[dict]:
        """Every record of (workflow, target) still kept (90 days), newest first.

        Scans the job index of every workflow a page at a time, one pipelined round trip per page
        (a few seconds for a hundred thousand records).
        """
        start = 0
        while True:
            try:
                ids = self.r.zrevrange(f"{self.prefix}:jobs", start, start + page - 1)
                if not ids:
                    return
                pipe = self.r.pipeline(transaction=False)
                for jid in ids:
                    pipe.get(self._key(jid.decode()))
                raws = pipe.execute()
            except redis.RedisError as e:
                raise ConnectionFailed(f"list job records of {workflow} {target}: {e}") from e
            for raw in raws:
                if raw is None:
                    continue
                rec = json.loads(raw)
                if rec.get("workflow") == workflow and rec.get("target") == target:
                    yield rec
            start += page

    def recent(self, limit: int = 20) -> list[dict]:
        """The newest records first."""
        ids = self.r.zrevrange(f"{self.prefix}:jobs", 0, limit - 1)
        out = []
        for jid in ids:
            rec = self.find(jid.decode())
            if rec is not None:
                out.append(rec)
        return out

    def update(self, job_id: str, change: Callable[[dict], Any], fence: Held | None = None,
               release: Held | None = None) -> dict:
        """Apply ``change`` atomically; with ``fence`` only while that lock is ours; ``release`` frees it in the same write
        and retires its token (no renewal can re-take it after)."""
        key = self._key(job_id)
        # A WATCHed transaction is never retried by the client itself: redis-py turns a connection error
        # while watching into WatchError.  Contention is retried at once (50 times at most); an outage
        # with backoff until ``outage_grace`` has passed.
        outage_until = None
        pause = 0.1
        conflicts = 0
        while conflicts < 50:
            try:
                with self.r.pipeline() as pipe:
                    lock_keys = list(dict.fromkeys(h.key for h in (fence, release) if h is not None))
                    counter = release.key + ":fence" if release is not None else None
                    pipe.watch(key, *lock_keys, *([counter] if counter else []))
                    raw = pipe.get(key)
                    if raw is None:
                        raise NotFound(f"no job record {job_id!r}")
                    holders = {k: pipe.get(k) for k in lock_keys}
                    if fence is not None and holders[fence.key] != fence.value.encode():
                        raise LockLost(f"lock {fence.key} no longer held by job {job_id} (token {fence.token}); "
                                       f"status write refused")
                    # A lock already expired or taken over is not ours to delete.
                    free = release is not None and holders[release.key] == release.value.encode()
                    # The lock's token retired with the job, whether its key is still there or not: a renewal of this
                    # job still in flight (a renewer blocked in a Redis outage when its phase ended) would otherwise
                    # re-take a lock whose key was lost (expired across a Redis restart, say) and hold it for a whole
                    # TTL after the job ended: the next run skipped.  Nobody was granted a newer token if the counter
                    # still holds ours; moving it on is what the next take does anyway.
                    retire = release is not None and pipe.get(counter) == str(release.token).encode()
                    rec = json.loads(raw)
                    change(rec)
                    rec["updated"] = now()
                    pipe.multi()
                    pipe.set(key, json.dumps(rec), ex=RETENTION_SECONDS)
                    if rec["state"] in TERMINAL:
                        pipe.zrem(self._active_key, job_id)
                    if free:
                        pipe.delete(release.key)
                    if retire:
                        pipe.incr(counter)
                    pipe.execute()
                    return rec
            except (redis.WatchError, redis.ConnectionError, redis.TimeoutError) as e:
                outage = not isinstance(e, redis.WatchError) or "ConnectionError" in str(e)
                if not outage:
                    conflicts += 1
                    continue
                outage_until = outage_until or time.monotonic() + self.outage_grace
                if time.monotonic() >= outage_until:
                    raise ConnectionFailed(f"update job record {job_id}: Redis unreachable for "
                                           f"{self.outage_grace:.0f}s: {e}") from e
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
            except redis.RedisError as e:
                raise ConnectionFailed(f"update job record {job_id}: {e}") from e
        raise ConnectionFailed(f"update job record {job_id}: too much contention")


def phase_entry(rec: dict, name: str) -> dict:
    """The phase dict called ``name`` in a record."""
    for p in rec["phases"]:
        if p["name"] == name:
            return p
    raise KeyError(name)
