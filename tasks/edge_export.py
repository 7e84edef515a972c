"""Celery tasks of the edge-export workflow, made from its declaration (``backup.edge_export.DEFINITION``).

Public entry point (stable name, for other services): ``backup.edge_export``
with keyword arguments ``table`` (str, ``db.table``), ``months`` (int, optional),
``end`` (str ``YYYY-MM-DD``, optional), ``idempotency_key`` (str, optional; see
backup/enqueue.py).  It returns ``{"job_id", "state"}``; the job record is
at Redis key ``<prefix>:job:<job_id>`` (docs/enqueue-contract.md).

Chain: lock → export → transfer [io queue] → cleanup → finish, failing into
the error handler, which runs ``backup.edge_export.discard_remote_temp``.
"""

from __future__ import annotations

from backup.edge_export import DEFINITION
from tasks.workflow import register_workflow
from workers.app import app

TASKS = register_workflow(app, DEFINITION)
