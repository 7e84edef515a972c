"""What the public entry tasks share: rejecting bad requests, and idempotency keys.

A request that cannot start still gets a job record, failed with the reason
(``fail_request``), so a caller following the record sees why.

Idempotency keys: the same key within a window returns the job it first started.

A caller that may send the same request twice (a retrying HTTP handler, a
redelivered message in its own queue) passes ``idempotency_key``.  The first
request with a key claims ``<prefix>:idem:<workflow>:<key>`` (SET NX with the
``enqueue.idempotency_window`` TTL) for its job id and starts the job; any
later request with that key inside the window starts nothing and returns the
first job's id and state.  A redelivery of the first request itself (same
task id) goes on as usual.  Keys are scoped per workflow.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import redis

from base.errors import BackupError, ConnectionFailed, InvalidInput
from backup.resources import Resources

_KEY = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,200}")


def check_key(key) -> str:
    """The key if acceptable; InvalidInput naming the problem otherwise."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):  # fullmatch: ``$`` would let a trailing newline in
        raise InvalidInput(f"idempotency_key must be 1-200 characters of letters, digits and _.:@/+=-, "
                           f"got {str(key)[:200]!r}")
    return key


def submit_once(res: Resources, workflow: str, job_id: str, key, submit: Callable[[], dict]) -> dict:
    """The job record answering this request: ``submit()``'s own, or the earlier job holding ``key``.

    A bad key fails the request's own record (created by ``submit``) so that no phase starts.
    The record returned for a duplicate is the earlier job's (its ``job_id`` differs from ``job_id``);
    if that job's record is not written yet, a placeholder ``{"job_id", "state": "queued"}``.
    """
    if key is None:
        return submit()
    try:
        check_key(key)
    except InvalidInput as e:
        rec = submit()
        return fail_request(res, rec["job_id"], e)
    name = f"{res.settings.redis.key_prefix}:idem:{workflow}:{key}"
    try:
        claimed = res.redis.set(name, job_id, nx=True, ex=res.settings.enqueue.idempotency_window)
        holder = job_id if claimed else (res.redis.get(name) or b"").decode()
    except redis.RedisError as e:
        raise ConnectionFailed(f"idempotency key {key!r}: {e}") from e
    if holder in (job_id, ""):  # ours, or expired between SET and GET: this request starts the job
        rec = submit()
        return res.jobs.update(rec["job_id"], lambda r: r.update(idempotency_key=key))
    return res.jobs.find(holder) or {"job_id": holder, "state": "queued"}


def fail_request(res: Resources, job_id: str, err: BackupError) -> dict:
    """Fail a request's still-queued job record with ``err`` before any phase starts."""
    def fail(r):
        if r["state"] == "queued":
            r.update(state="failed", error=err.one_line(), finished=r["updated"])
    return res.jobs.update(job_id, fail)
