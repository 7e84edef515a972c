"""Celery tasks of the table-backup workflow, made from its declaration (``backup.table_backup.DEFINITION``).

Every phase runs on the ``spark`` queue; the entry task needs no Spark and stays on ``default``.

Public entry point (stable name, for other services): ``backup.table_backup`` with keyword
arguments ``table`` (str, ``db.table``), ``source`` (str, folder of ``;``-CSV files the Spark
cluster reads), ``suffix`` (str, optional, default ``table_backup.suffix``), ``versioned``
(bool, optional), ``retention`` (int, versioned only), ``day`` (``YYYY-MM-DD``, versioned
only; default today) and ``idempotency_key`` (str, optional; see backup/enqueue.py).  It returns
``{"job_id", "state"}``; the job record is at Redis key ``<prefix>:job:<job_id>``
(docs/enqueue-contract.md).

Chain: lock → validate → load → write → finish, failing into the error handler, which runs
``backup.table_backup.discard_staging``.
"""

from __future__ import annotations

from backup.table_backup import DEFINITION
from tasks.workflow import register_workflow
from workers.app import app

TASKS = register_workflow(app, DEFINITION)
