"""Small text conventions shared by every layer: control characters, UTC stamps, run ids."""

from __future__ import annotations

import datetime as dt
import re

#: ASCII control characters (C0 and DEL): never allowed in names, paths or one-line messages
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def utc_z(when: dt.datetime | None = None) -> str:
    """``2026-12-05T06:40:00Z``: an aware time (default now) in UTC, to the second, with a ``Z``."""
    when = when or dt.datetime.now(dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_id(created: float, job_id: str) -> str:
    """Folder or file name of one run: its creation time in UTC and the job id's first 8 characters.

    Sorts by time, and two runs never share it (different job ids).
    """
    t = dt.datetime.fromtimestamp(created, dt.timezone.utc)
    return f"{t:%Y%m%dT%H%M%SZ}-{job_id[:8]}"
