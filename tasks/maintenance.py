"""Housekeeping tasks fired by beat: thin wrappers over ``backup.stalls``.

``backup.stall_check`` runs every ``stall.check_every`` seconds (beat entry
``STALL_CHECK_ENTRY``, added to every schedule by ``config.schedule``); it
fails loudly, once, each job that stopped moving (see backup/stalls.py).
"""

from __future__ import annotations

from backup.stalls import check_stalls
from backup.workflow import QUEUES
from tasks.common import cleanup_for, resources
from workers.app import app


@app.task(name="backup.stall_check", acks_late=True, ignore_result=False)
def stall_check() -> list[dict]:
    """Fail every stalled job once; returns what it acted on."""
    return check_stalls(resources(), QUEUES, cleanup_for)
