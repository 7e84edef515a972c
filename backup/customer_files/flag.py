"""The customer-files status flag: one small file, replaced by each run, that downstream jobs poll.

Its first line is the outcome, SUCCESS (every customer's files copied), PARTIAL (some
customers had failures) or FAIL (all did, or the run failed outside the flag phase); then
``key=value`` lines: the job id, when it was written, the run's counts and its error.
It is written atomically (temp name, rename) with one ``write_atomic`` at ``status_flag``.
"""

from __future__ import annotations

import posixpath

from base.errors import LockLost
from base.text import utc_z
from backup.customer_files.workflow import FlagCounts, Flagged, config
from backup.resources import Resources
from storage.locations import open_location


def outcome_of(customers: dict) -> tuple[str, list[str]]:
    """SUCCESS, PARTIAL (some customers failed) or FAIL (all did), and the failed customers."""
    failed = [c for c, v in customers.items() if v.get("failed") or v.get("error")]
    if not failed:
        return "SUCCESS", []
    return ("FAIL" if len(failed) == len(customers) else "PARTIAL"), failed


def flag_text(outcome: str, rec: dict) -> str:
    """Content of the status flag file: the outcome, then key=value counts."""
    counts = FlagCounts.read(rec)
    totals = counts.totals or counts.discovered or {}
    lines = [outcome, f"job_id={rec['job_id']}",
             f"written_at={utc_z()}"]
    lines += [f"{k}={v}" for k, v in totals.items()]
    if rec.get("error"):
        lines.append(f"error={rec['error']}")
    return "\n".join(lines) + "\n"


def write_flag(res: Resources, outcome: str, rec: dict) -> str:
    """Write the status flag (replacing the previous run's) and return its URI."""
    backend, path = open_location(res.settings, config(res).status_flag)
    with backend:
        backend.mkdir(posixpath.dirname(path) or "/")
        backend.write_atomic(path, flag_text(outcome, rec).encode(), overwrite=True)
        return backend.uri(path)


def write_fail_flag(res: Resources, rec: dict) -> None:
    """After a failure outside the flag phase: FAIL flag and record (not when another run owns the lock)."""
    if (rec.get("error") or "").startswith(LockLost.__name__):
        return
    uri = write_flag(res, "FAIL", rec)

    def change(r):
        r["outputs"].update(Flagged(flag="FAIL", flag_uri=uri).as_outputs())
    res.jobs.update(rec["job_id"], change)
