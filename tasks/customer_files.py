"""Celery tasks of the customer-files workflow: thin wrappers over ``backup.customer_files``.

Public entry point (stable name, for other services and beat):
``backup.customer_files`` with no arguments; it returns ``{"job_id", "state"}``.

The run is one chain: lock → discover → chord(group of one
``backup.customer_files.copy`` per customer [io queue], collect) → flag.
A copy task never fails the chord: everything that goes wrong in it, down to
the task itself dying too often, comes back as data that collect reports.
"""

from __future__ import annotations

from celery import chain, chord, group

from backup import customer_files as wf
from base.errors import RetryableError
from backup.jobs import phase_entry
from backup.runner import phase
from tasks.common import FAILURE_CLEANUP, PhaseTask, make_phase_task, on_chain_error, progress_publisher, resources
from tasks.entry import EntryTask, start_job
from workers.app import app


@app.task(name="backup.customer_files", bind=True, acks_late=True, base=EntryTask, workflow=wf.WORKFLOW)
def customer_files(self, idempotency_key: str | None = None) -> dict:
    """Create the job record and start the run's chain."""
    return start_job(self, idempotency_key, lambda: wf.submit(resources(), job_id=self.request.id),
                     lambda rec: build_chain(rec["job_id"], rec["args"]["customers"]))


lock = make_phase_task(app, "backup.customer_files.lock", "lock", wf.lock_phase)
discover = make_phase_task(app, "backup.customer_files.discover", "discover", wf.discover_phase)
collect = make_phase_task(app, "backup.customer_files.collect", "collect", wf.collect_phase)
flag = make_phase_task(app, "backup.customer_files.flag", "flag", wf.flag_phase)


@app.task(name="backup.customer_files.copy", bind=True, base=PhaseTask, phase_name="copy")
def copy(self, payload: dict, customer: str) -> dict:
    """Copy one customer's files to both locations, reporting per-file results (and its own failure) as data."""
    res = resources()
    job_id = payload["job_id"]
    try:
        with phase(res, job_id, wf.copy_phase(customer), attempt=self.request.retries + 1) as ctx:
            if not ctx.active:
                return {"job_id": job_id, "customer": customer, "state": ctx.rec["state"]}
            publish = progress_publisher(self)
            ctx.on_progress = lambda meta: publish({**meta, "customer": customer})
            return wf.copy_customer(ctx, customer)
    except RetryableError as e:
        try:
            started = phase_entry(res.jobs.get(job_id), wf.copy_phase(customer)).get("started")
            self.retry_or_raise(e, started)
        except RetryableError as final:  # the budget is spent: the customer fails, the others go on
            return wf.record_customer_error(res, job_id, customer, final)
    except Exception as e:  # includes the soft time limit: the customer fails, the others go on
        return wf.record_customer_error(res, job_id, customer, e)


def build_chain(job_id: str, customers: list[str]):
    """lock → discover → chord(copy per customer, collect) → flag, each failing into the error handler."""
    payload = {"job_id": job_id}
    header = group(copy.s(customer=c) for c in customers)
    # The body is immutable: it reads the per-file results from Redis, not the header's return values.
    body = collect.si(payload).on_error(on_chain_error.s())
    return chain(lock.s(payload).on_error(on_chain_error.s()), discover.s().on_error(on_chain_error.s()),
                 chord(header, body), flag.s().on_error(on_chain_error.s()))


FAILURE_CLEANUP[wf.WORKFLOW] = wf.write_fail_flag
