"""Celery tasks of the restore-drill workflow, made from its declaration (``backup.restore_drill.DEFINITION``).

Public entry point (stable name, for other services and the beat schedule): ``backup.restore_drill`` with
keyword arguments ``target`` (str, optional: ``WORKFLOW:TARGET`` such as ``edge-export:mnaas.traffic``;
default every target in ``restore_drill.targets``) and ``idempotency_key`` (str, optional; see
backup/enqueue.py).  It returns ``{"job_id", "state"}``; the job record is at Redis key
``<prefix>:job:<job_id>``, each target's result in its ``outputs.drills`` (docs/restore-drills.md).

Chain: lock → drill [spark] → finish, failing into the error handler.
"""

from __future__ import annotations

from backup.restore_drill import DEFINITION
from tasks.workflow import register_workflow
from workers.app import app

TASKS = register_workflow(app, DEFINITION)
