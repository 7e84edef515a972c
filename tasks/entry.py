"""Base class of the public entry tasks (``backup.<workflow>``), which other services call by name.

A request whose argument names do not fit the entry task (a typo, a missing
``table``) would otherwise fail inside Celery with a TypeError and leave no job
record, so a caller following ``<prefix>:job:<job_id>`` would wait forever.
``EntryTask`` checks the names first and records such a request as a failed
job (no phase starts), like any other bad request.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from celery import Task

from backup.enqueue import fail_request, submit_once
from base.errors import InvalidInput
from tasks.common import resources


class EntryTask(Task):
    """Public entry task: wrong or missing argument names fail the job record with a clear error."""

    abstract = True
    workflow: str = ""
    #: the request arguments the task accepts (``Workflow.request_signature``)
    request_signature: inspect.Signature | None = None

    def __call__(self, *args, **kwargs):
        signature = self.request_signature or inspect.signature(self.run)
        problem = argument_problem(signature, args, kwargs)
        if problem:
            accepted = ", ".join(signature.parameters)
            err = InvalidInput(f"bad arguments for {self.name}: {problem} (accepted keyword arguments: {accepted})")
            rec = reject(self.request.id, self.workflow, kwargs, err)
            return {"job_id": rec["job_id"], "state": rec["state"], "error": rec["error"]}
        return super().__call__(*args, **kwargs)


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
    rec = submit_once(res, task.workflow, job_id, idempotency_key, submit)
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
