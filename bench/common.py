"""Shared bench plumbing: settings of the local platform, timing, one JSON line out."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"


def settings(overrides: dict | None = None, services: list[str] | None = None):
    """Settings of the local platform (config/local.yaml or $BACKUP_CONFIG), platform (or ``services``) started."""
    from config.settings import load_settings
    from local_platform.services import LocalPlatform

    s = load_settings(os.environ.get("BACKUP_CONFIG"), overrides)
    LocalPlatform(s).up(only=services)
    return s


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """Wall seconds of one call and its result."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc), e.g. the local Spark JVM."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rotated(items: list, round_: int) -> list:
    """``items`` starting at position ``round_`` (mod its length): over as many rounds as items, each item runs once in
    each position.  Why: the side timed first in a round, right after the floors, measured 0.3 s slower than the same
    code timed after it (bench/hdfs_copies.py comparing a checkout with itself, 2026-12-06)."""
    k = round_ % len(items) if items else 0
    return items[k:] + items[:k]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> dict:
    """What the figures were taken on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
            "load1": round(os.getloadavg()[0], 2)}


def emit(record: dict) -> None:
    """Print the single JSON line of a benchmark."""
    print(json.dumps({**record, "machine": machine()}), flush=True)
