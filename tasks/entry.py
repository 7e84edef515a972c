"""Base class of the public entry tasks (``backup.<workflow>``), which other services call by name.

A request whose argument names do not fit the entry task (a typo, a missing
``table``) would otherwise fail inside Celery with a TypeError and leave no job
record, so a caller following ``<prefix>:job:<job_id>`` would wait forever.
``EntryTask`` checks the names first and records such a request as a failed
job (no phase starts), like any other bad request.

Callers choose the job id (the Celery task id), so it is checked here first,
before it names anything: one rule (``base.identifiers.check_job_id``: 32 hex
digits or a UUID), and an id that already names a job of a *different* request
is refused without touching that job (``claim_job_id``).  A request refused
for its id gets no record (the id is not ours to write); the task's result
carries the error.  The same request delivered again (same id, same
arguments: a redelivery after a worker died) goes on as before.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable

from celery import Task

from backup.enqueue import fail_request, submit_once
from backup.jobs import RETENTION_SECONDS
from base.errors import BackupError, InvalidInput
from base.identifiers import check_job_id
from tasks.common import resources


class EntryTask(Task):
    """Public entry task: wrong or missing argument names fail the job record with a clear error."""

    abstract = True
    workflow: str = ""
    #: the request arguments the task accepts (``Workflow.request_signature``)
    request_signature: inspect.Signature | None = None

    def __call__(self, *args, **kwargs):
        try:
            claim_job_id(self.request.id, self.workflow, args, kwargs)
        except InvalidInput as err:
            return {"job_id": None, "state": "failed", "error": err.one_line()}
        signature = self.request_signature or inspect.signature(self.run)
        problem = argument_problem(signature, args, kwargs)
        if problem:
            accepted = ", ".join(signature.parameters)
            err = InvalidInput(f"bad arguments for {self.name}: {problem} (accepted keyword arguments: {accepted})")
            rec = reject(self.request.id, self.workflow, kwargs, err)
            return {"job_id": rec["job_id"], "state": rec["state"], "error": rec["error"]}
        return super().__call__(*args, **kwargs)


def claim_job_id(job_id, workflow: str, args: tuple, kwargs: dict) -> str:
    """Check a request's job id and bind it to this request; InvalidInput if bad or already another request's.

    ``<prefix>:request:<job_id>`` holds a digest of (workflow, arguments), set once (SET NX) for as long as
    job records live.  A second request under the same id with other arguments or for another workflow is
    refused, and so is an id whose record exists without such a binding (made before this check, or written
    by hand): it names a job this request did not start.
    """
    check_job_id(job_id)
    res = resources()
    try:
        text = json.dumps([workflow, list(args), kwargs], sort_keys=True, default=repr)
    except (TypeError, ValueError):  # not JSON-like (only an in-process call can send that)
        text = repr([workflow, args, kwargs])
    digest = hashlib.sha256(text.encode()).hexdigest()
    key = f"{res.settings.redis.key_prefix}:request:{job_id}"
    if res.redis.set(key, digest, nx=True, ex=RETENTION_SECONDS):
        if res.jobs.find(job_id) is None:
            return job_id
        res.redis.delete(key)  # the record is older than any binding: not this request's
        raise InvalidInput(f"job id {job_id} already names a job; use a new id per request")
    if (res.redis.get(key) or b"").decode() != digest:
        raise InvalidInput(f"job id {job_id} already names another request's job; use a new id per request")
    return job_id  # the same request again (a redelivery): it goes on where it was


def argument_problem(signature: inspect.Signature, args: tuple, kwargs: dict) -> str | None:
    """What is wrong with the argument names of a call (unknown names first), or None."""
    unknown = [k for k in kwargs if k not in signature.parameters]
    if unknown:
        return f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        return str(e)
    return None


def reject(job_id: str, workflow: str, kwargs: dict, err: InvalidInput) -> dict:
    """Create the job record of a request that cannot start, already failed with ``err``."""
    res = resources()
    res.jobs.create(job_id, workflow, "-", kwargs, [])  # kwargs came as JSON, so they store as JSON
    return fail_request(res, job_id, err)


def start_job(task: Task, idempotency_key: str | None, submit: Callable[[], dict],
              build_chain: Callable[[dict], object]) -> dict:
    """The body every entry task shares: submit once, then start the job's chain exactly once."""
    res = resources()
    job_id = task.request.id

    def submit_checked() -> dict:
        # Every validation error ends as InvalidInput with a record, even one a check forgot to wrap
        # (a ValueError of a date out of range, a TypeError of a wrong type): the caller must not wait forever.
        try:
            return submit()
        except BackupError:
            raise
        except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as e:
            err = InvalidInput(f"bad request for {task.name}: {type(e).__name__}: {str(e)[:200]}")
            return reject(job_id, task.workflow, dict(task.request.kwargs or {}), err)

    rec = submit_once(res, task.workflow, job_id, idempotency_key, submit_checked)
    if rec["job_id"] != job_id:  # same idempotency key as an earlier request: that job answers
        return {"job_id": rec["job_id"], "state": rec["state"], "duplicate": True}
    if rec["state"] != "queued":
        return {"job_id": rec["job_id"], "state": rec["state"], "error": rec.get("error")}
    # Claim the chain start first: a redelivered entry task must not start a second chain.
    if not res.redis.set(f"{res.settings.redis.key_prefix}:chain:{job_id}", 1, nx=True,
                         ex=res.settings.celery.result_expires):
        return {"job_id": job_id, "state": res.jobs.get(job_id)["state"]}
    build_chain(rec).apply_async()
    return {"job_id": job_id, "state": "queued"}
