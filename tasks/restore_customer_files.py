"""Celery tasks of the restore-customer-files workflow, made from its declaration
(``backup.restore_customer_files.DEFINITION``).

Public entry point (stable name, for other services): ``backup.restore_customer_files`` with keyword
arguments ``customer`` (str, a configured customer), ``location`` (str, where the files go),
``domain``, ``file`` (a file-name glob) and ``since`` (``YYYY-MM-DD``), all three optional, and
``idempotency_key``.  It returns ``{"job_id", "state"}`` (docs/enqueue-contract.md).

Chain: lock → plan → verify [io queue] → restore [io queue] → finish, failing into the error handler.
"""

from __future__ import annotations

from backup.restore_customer_files import DEFINITION
from tasks.workflow import register_workflow
from workers.app import app

TASKS = register_workflow(app, DEFINITION)
