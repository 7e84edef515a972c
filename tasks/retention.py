"""Celery tasks of the retention workflow, made from its declaration (``backup.retention.DEFINITION``).

Public entry point (stable name, for other services and beat): ``backup.retention`` with keyword
arguments ``workflow`` (``edge-export`` or ``customer-files``), ``target`` (``DB.TABLE``; ``all`` or
none for customer-files), ``dry_run`` (default false) and ``idempotency_key``.  It returns
``{"job_id", "state"}`` (docs/enqueue-contract.md).  Every successful backup of a workflow with a
retention rule enqueues it (``tasks.common.after_success``).

Chain: lock → plan → delete [io queue] → finish, failing into the error handler.
"""

from __future__ import annotations

from backup.retention import DEFINITION
from tasks.workflow import register_workflow
from workers.app import app

TASKS = register_workflow(app, DEFINITION)
