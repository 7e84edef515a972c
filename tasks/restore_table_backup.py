"""Celery tasks of the restore-table-backup workflow, made from its declaration (``backup.restore_table_backup.DEFINITION``).

Every phase runs on the ``spark`` queue; the entry task needs no Spark and stays on ``default``.

Public entry point (stable name, for other services): ``backup.restore_table_backup`` with keyword
arguments ``table`` (str, ``db.table``: the live table whose backup is restored), ``into`` (str,
``db.new_table``) or ``replace_live`` (bool), ``replace`` (bool, with ``into``), ``version``
(``YYYYMMDD``, a versioned backup), ``keep_partition_columns`` (bool), ``suffix`` (str, default
``table_backup.suffix``) and ``idempotency_key`` (str, optional; see backup/enqueue.py).  It returns
``{"job_id", "state"}``; the job record is at Redis key ``<prefix>:job:<job_id>``
(docs/enqueue-contract.md, docs/restore-table-backup.md).

Chain: lock → check → load → swap → finish, failing into the error handler, which runs
``backup.restore_table_backup.discard_restore``.
"""

from __future__ import annotations

from backup.restore_table_backup import DEFINITION
from tasks.workflow import register_workflow
from workers.app import app

TASKS = register_workflow(app, DEFINITION)
