"""Celery tasks of the table-backup workflow: thin wrappers over ``backup.table_backup``.

The phases run on the ``spark`` queue (workers.app.TASK_ROUTES); the entry task needs no Spark and
stays on ``default``.

Public entry point (stable name, for other services): ``backup.table_backup`` with keyword
arguments ``table`` (str, ``db.table``), ``source`` (str, folder of ``;``-CSV files the Spark
cluster reads), ``suffix`` (str, optional, default ``table_backup.suffix``), ``versioned``
(bool, optional), ``retention`` (int, versioned only), ``day`` (``YYYY-MM-DD``, versioned
only; default today) and ``idempotency_key`` (str, optional; see backup/enqueue.py).  It returns
``{"job_id", "state"}``; the job record is at Redis key ``<prefix>:job:<job_id>``
(docs/enqueue-contract.md).
"""

from __future__ import annotations

from celery import chain

from backup import table_backup as wf
from tasks.common import FAILURE_CLEANUP, make_phase_task, on_chain_error, resources
from tasks.entry import EntryTask, start_job
from workers.app import app


@app.task(name="backup.table_backup", bind=True, acks_late=True, base=EntryTask, workflow=wf.WORKFLOW)
def table_backup(self, table: str, source: str, suffix: str | None = None, versioned: bool = False,
                 retention: int | None = None, day: str | None = None, idempotency_key: str | None = None) -> dict:
    """Validate the request, create the job record and start the phase chain."""
    return start_job(self, idempotency_key,
                     lambda: wf.submit(resources(), table, source, suffix, versioned, retention, day,
                                       job_id=self.request.id),
                     lambda rec: build_chain(rec["job_id"]))


lock = make_phase_task(app, "backup.table_backup.lock", "lock", wf.lock_phase)
validate = make_phase_task(app, "backup.table_backup.validate", "validate", wf.validate_phase, spark=True)
load = make_phase_task(app, "backup.table_backup.load", "load", wf.load_phase, spark=True)
write = make_phase_task(app, "backup.table_backup.write", "write", wf.write_phase, spark=True)
finish = make_phase_task(app, "backup.table_backup.finish", "finish", wf.finish_phase)


def build_chain(job_id: str):
    """lock → validate → load → write → finish, failing into the error handler."""
    return chain(lock.s({"job_id": job_id}), validate.s(), load.s(), write.s(), finish.s()).on_error(
        on_chain_error.s())


FAILURE_CLEANUP[wf.WORKFLOW] = wf.discard_staging
