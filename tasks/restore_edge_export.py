"""Celery tasks of the restore-edge-export workflow, made from its declaration (``backup.restore_edge_export.DEFINITION``).

Public entry point (stable name, for other services): ``backup.restore_edge_export`` with keyword
arguments ``table`` (str, ``db.table``: the live table the archive was exported from), ``into``
(str, ``db.table`` to create; omitted with ``replace_live``), one of ``job`` (str, the edge-export
job id), ``window`` (str, ``START..END`` as the archive is named) or ``latest`` (bool, the default),
``replace`` (bool), ``replace_live`` (bool) and ``idempotency_key`` (str, optional; see
backup/enqueue.py).  It returns ``{"job_id", "state"}``; the job record is at Redis key
``<prefix>:job:<job_id>`` (docs/enqueue-contract.md, docs/restore-edge-export.md).

Chain: lock → check [spark] → fetch [io] → load [spark] → swap [spark] → cleanup [io] → finish,
failing into the error handler, which runs ``backup.restore_edge_export.undo``.
"""

from __future__ import annotations

from backup.restore_edge_export import DEFINITION
from tasks.workflow import register_workflow
from workers.app import app

TASKS = register_workflow(app, DEFINITION)
