"""Celery tasks of the customer-files workflow: thin wrappers over ``backup.customer_files``.

Public entry point (stable name, for other services and beat):
``backup.customer_files`` with no arguments; it returns ``{"job_id", "state"}``.

The run is one chain: lock → discover → chord(group of one
``backup.customer_files.copy`` per customer [io queue], collect) → flag.
A copy task never fails the chord: everything that goes wrong in it, down to
the task itself dying too often, comes back as data that collect reports.  A copy
task whose files failed for a transient reason only is retried within ``retry.budget``
(``wf.copy_customer`` raises ``RetryableError``; the retry copies those files alone).
"""

from __future__ import annotations

from celery import chain, chord, group

from backup import customer_files as wf
from base.errors import RetryableError
from backup.runner import phase
from base.errors import InvalidInput
from base.identifiers import check_job_id
from tasks.common import PhaseTask, on_chain_error, progress_publisher, resources
from tasks.workflow import register_workflow
from workers.app import app


@app.task(name=wf.DEFINITION.phase_task("copy"), bind=True, base=PhaseTask, phase_name="copy")
def copy(self, payload: dict, customer: str) -> dict:
    """Copy one customer's files to both locations, reporting per-file results (and its own failure) as data."""
    res = resources()
    job_id = check_job_id(payload.get("job_id") if isinstance(payload, dict) else None)
    if customer not in wf.config(res).customers:  # the customer names folders: only a configured one
        raise InvalidInput(f"copy task for unknown customer {str(customer)[:80]!r}")
    try:
        with phase(res, job_id, wf.copy_phase(customer), attempt=self.request.retries + 1) as ctx:
            if not ctx.active:
                return {"job_id": job_id, "customer": customer, "state": ctx.rec["state"]}
            publish = progress_publisher(self)
            ctx.on_progress = lambda meta: publish({**meta, "customer": customer})
            return wf.copy_customer(ctx, customer)
    except RetryableError as e:
        try:  # a retry copies again only the files whose failures were all transient (wf.copy_customer)
            self.retry_or_raise(e, wf.copy_retry_since(res.jobs.get(job_id), customer))
        except RetryableError as final:  # the budget is spent: the customer fails, the others go on
            return wf.record_customer_error(res, job_id, customer, final)
    except Exception as e:  # includes the soft time limit: the customer fails, the others go on
        return wf.record_customer_error(res, job_id, customer, e)


def build_chain(rec: dict):
    """lock → discover → chord(copy per customer, collect) → flag, each failing into the error handler."""
    payload = {"job_id": rec["job_id"]}
    header = group(copy.s(customer=c) for c in rec["args"]["customers"])
    # The body is immutable: it reads the per-file results from Redis, not the header's return values.
    body = TASKS["collect"].si(payload).on_error(on_chain_error.s())
    return chain(TASKS["lock"].s(payload).on_error(on_chain_error.s()),
                 TASKS["discover"].s().on_error(on_chain_error.s()),
                 chord(header, body), TASKS["flag"].s().on_error(on_chain_error.s()))


TASKS = register_workflow(app, wf.DEFINITION, build_chain=build_chain)
