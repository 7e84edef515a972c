"""Celery tasks of the edge-export workflow: thin wrappers over ``backup.edge_export``.

Public entry point (stable name, for other services): ``backup.edge_export``
with keyword arguments ``table`` (str, ``db.table``), ``months`` (int, optional),
``end`` (str ``YYYY-MM-DD``, optional), ``idempotency_key`` (str, optional; see
backup/enqueue.py).  It returns ``{"job_id", "state"}``; the job record is
at Redis key ``<prefix>:job:<job_id>`` (docs/enqueue-contract.md).
"""

from __future__ import annotations

from celery import chain

from backup import edge_export as wf
from tasks.common import FAILURE_CLEANUP, make_phase_task, on_chain_error, resources
from tasks.entry import EntryTask, start_job
from workers.app import app


@app.task(name="backup.edge_export", bind=True, acks_late=True, base=EntryTask, workflow=wf.WORKFLOW)
def edge_export(self, table: str, months: int | None = None, end: str | None = None,
                idempotency_key: str | None = None) -> dict:
    """Validate the request, create the job record and start the phase chain."""
    return start_job(self, idempotency_key, lambda: wf.submit(resources(), table, months, end, job_id=self.request.id),
                     lambda rec: build_chain(rec["job_id"]))


lock = make_phase_task(app, "backup.edge_export.lock", "lock", wf.lock_phase)
export = make_phase_task(app, "backup.edge_export.export", "export", wf.export_phase)
transfer = make_phase_task(app, "backup.edge_export.transfer", "transfer", wf.transfer_phase)
cleanup = make_phase_task(app, "backup.edge_export.cleanup", "cleanup", wf.cleanup_phase)
finish = make_phase_task(app, "backup.edge_export.finish", "finish", wf.finish_phase)


def build_chain(job_id: str):
    """lock → export → transfer → cleanup → finish, failing into the error handler."""
    return chain(lock.s({"job_id": job_id}), export.s(), transfer.s(), cleanup.s(), finish.s()).on_error(
        on_chain_error.s())


FAILURE_CLEANUP[wf.WORKFLOW] = wf.discard_remote_temp
