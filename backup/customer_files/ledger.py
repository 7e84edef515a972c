"""The customer-files workflow's bookkeeping in Redis: the run's plan, per-file results, customer errors and the ledger.

Redis keys, besides the job record (``<p>`` is ``redis.key_prefix``):
  <p>:customer_files:plan:<job>            customer -> files chosen by discover
  <p>:customer_files:results:<job>:<cust>  "<source index>\\0<path>" -> per-file result (a
                                           redelivered copy task resumes from here)
  <p>:customer_files:errors:<job>          customer -> error that ended its copy task
  <p>:customer_files:ledger:<cust>         "<path>\\0<size>\\0<mtime>" -> sha256, records, job (an entry
                                           goes when its file left a folder discover listed: ``prune_ledger``)
  <p>:customer_files:uncounted             job -> when its plan was saved: runs whose count rows may not all be
                                           in the Hive count table yet (``owed_jobs``)
The ledger only saves work: a file missing from it is copied again, and a
destination already holding the identical file is verified, not rewritten.  Because a file in the
ledger is never planned again, the count rows of a run whose collect never succeeded (failed, or
the job failed before it) would never reach the count table: such a run stays in ``uncounted``
and the next run's collect loads its rows with its own (``owed_jobs``, ``counts_loaded``).

A run's keys expire with ``celery.result_expires``; the ledger does not, but the discover phase removes the entries
of files no longer in their source folders (``prune_ledger``).  Every access is
one round trip (a pipeline where several writes go together); a Redis error becomes
ConnectionFailed, which the phases retry.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from base.errors import BackupError, ConnectionFailed, classify
from backup.customer_files.workflow import copy_phase
from backup.jobs import now, phase_entry
from backup.resources import Resources

log = logging.getLogger(__name__)


def _key(res: Resources, *parts: str) -> str:
    return ":".join([res.settings.redis.key_prefix, "customer_files", *parts])


def _expire(res: Resources) -> int:
    return res.settings.celery.result_expires


def ledger_field(path: str, size: int, mtime: float) -> str:
    """Ledger entry name of a source file in a given state."""
    return f"{path}\0{size}\0{mtime!r}"


def plan_key(item: dict) -> str:
    """Identity of a planned file inside a run: source folder index and path."""
    return f"{item['source']}\0{item['path']}"


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    """Redis errors inside the block become ConnectionFailed (retryable)."""
    try:
        yield
    except redis.RedisError as e:
        raise ConnectionFailed(f"{what}: {e}") from e


# -- the ledger: files already backed up ------------------------------------------

def known_files(res: Resources, customer: str, fields: list[str]) -> list[bytes | None]:
    """The ledger entries of ``fields`` (``ledger_field``), None for a file not backed up in that state."""
    with _redis_errors("read ledger"):
        return res.redis.hmget(_key(res, "ledger", customer), fields) if fields else []


def remember_many(res: Resources, job_id: str, customer: str, verified: list[tuple[dict, dict]]) -> None:
    """Ledger entries for files whose copies are verified, as (planned item, result) pairs: one round trip."""
    if not verified:
        return
    entries = {ledger_field(item["path"], item["size"], item["mtime"]):
               json.dumps({"sha256": result["sha256"], "records": result["records"], "job_id": job_id,
                           "at": result["copied_at"]}) for item, result in verified}
    with _redis_errors("write ledger"):
        res.redis.hset(_key(res, "ledger", customer), mapping=entries)


#: ledger entries read per HSCAN call and removed per HDEL: bounded round trips, never one long command
PRUNE_BATCH = 1000


@dataclass
class Listed:
    """What discover listed of one customer, for ``prune_ledger``: the folders it read in full, the
    ``ledger_field`` of every file in them, and how many of those the ledger holds."""

    folders: set[str] = field(default_factory=set)
    present: set[str] = field(default_factory=set)
    in_ledger: int = 0


def prune_ledger(res: Resources, customer: str, listed: Listed) -> int:
    """Remove the ledger entries of files that left their source folder; how many were removed.

    An entry goes only when the folder of its file was listed by this run (``listed.folders``: the customer's
    folders that exist and were read in full) and no file is there in the entry's state (``listed.present``).  So
    a source moved or deleted after its backup (``after_backup``), or changed since (its old state), leaves the
    ledger; an entry under a folder that is missing or could not be listed (a vanished mount looks like that)
    stays.

    Why: the ledger only saves work, so an entry of a file that is gone saves nothing, yet without this it was
    kept for ever (about 340 bytes of Redis memory a file: a feed of 50,000 files a day moved away after their
    backup grew Redis by 6 GB a year).  If such a file comes back in the same state it is planned again, and a
    destination already holding it is verified, not rewritten.
    Cost: one HLEN; only when the ledger holds more entries than the listed files it knows (``listed.in_ledger``:
    something left) one pass over the customer's ledger (HSCAN, ``PRUNE_BATCH`` entries a round trip), which then
    holds about the files of its source folders plus those that left.  A rerun with nothing gone pays the HLEN
    alone.  The caller holds the workflow's lock (no other run writes the ledger meanwhile)."""
    if not listed.folders:
        return 0
    name = _key(res, "ledger", customer)
    folders = {folder.encode() for folder in listed.folders}
    keep = {entry.encode() for entry in listed.present}
    stale = []
    with _redis_errors("prune ledger"):
        if res.redis.hlen(name) <= listed.in_ledger:  # every entry is a file just listed: nothing left
            return 0
        for entry, _ in res.redis.hscan_iter(name, count=PRUNE_BATCH):
            if entry not in keep and posixpath.dirname(entry.split(b"\0", 1)[0]) in folders:
                stale.append(entry)
        for start in range(0, len(stale), PRUNE_BATCH):
            res.redis.hdel(name, *stale[start:start + PRUNE_BATCH])
    if stale:
        log.info("customer %s: %d ledger entries of files no longer in their source folder removed", customer,
                 len(stale))
    return len(stale)


# -- one run: plan, results, errors -----------------------------------------------

def save_plan(res: Resources, job_id: str, plan: dict[str, list[dict]]) -> None:
    """The files chosen for this run, per customer, replacing any earlier plan of the job; with the plan, in the same
    transaction, the run is marked as owing count rows (``uncounted``) until a collect loads them."""
    name = _key(res, "plan", job_id)
    with _redis_errors("save plan"):
        pipe = res.redis.pipeline()
        pipe.delete(name)
        pipe.hset(name, mapping={c: json.dumps(files) for c, files in plan.items()})
        pipe.expire(name, _expire(res))
        if any(plan.values()):
            pipe.hset(_key(res, "uncounted"), job_id, now())
        pipe.execute()


def owed_jobs(res: Resources, job_id: str) -> list[str]:
    """The other runs whose count rows may be missing from the count table (their collect never succeeded), oldest
    first.  Their plans and results are kept ``celery.result_expires`` (7 days by default): the next run must come
    before that for its collect to load their rows (a run whose results are gone is named in the record and the
    log, then dropped from the set)."""
    with _redis_errors("read the runs owing count rows"):
        raw = res.redis.hgetall(_key(res, "uncounted"))
    owed = sorted(((v.decode(), k.decode()) for k, v in raw.items() if k.decode() != job_id))
    return [job for _, job in owed]


def counts_loaded(res: Resources, job_ids: list[str]) -> None:
    """These runs' count rows are in the count table now: they owe nothing."""
    if job_ids:
        with _redis_errors("clear the runs owing count rows"):
            res.redis.hdel(_key(res, "uncounted"), *job_ids)


def plan_exists(res: Resources, job_id: str) -> bool:
    with _redis_errors("read plan"):
        return bool(res.redis.exists(_key(res, "plan", job_id)))


def load_plan(res: Resources, job_id: str, customer: str) -> list[dict]:
    """The files discover chose for one customer."""
    with _redis_errors("read plan"):
        raw = res.redis.hget(_key(res, "plan", job_id), customer)
    return json.loads(raw) if raw else []


def load_results(res: Resources, job_id: str, customer: str) -> dict[str, dict]:
    """Per-file results recorded so far for one customer, by plan key."""
    with _redis_errors("read results"):
        raw = res.redis.hgetall(_key(res, "results", job_id, customer))
    # One decode of them all (as one JSON array): a call per result cost most of a 50,000-file collect's reading.
    decoded = json.loads(b"[" + b",".join(raw.values()) + b"]")
    if len(decoded) != len(raw):  # an entry holding more than one value (changed by hand): decoded one by one
        return {k.decode(): json.loads(v) for k, v in raw.items()}
    return dict(zip((k.decode() for k in raw), decoded))


def save_result(res: Resources, job_id: str, customer: str, key: str, result: dict) -> None:
    """One file's result (a redelivered copy task skips the files that have one)."""
    save_results(res, job_id, customer, {key: result})


def save_results(res: Resources, job_id: str, customer: str, results: dict[str, dict]) -> None:
    """Several files' results by plan key, in one round trip (a redelivered copy task skips the files that have one)."""
    if not results:
        return
    name = _key(res, "results", job_id, customer)
    with _redis_errors("save result"):
        pipe = res.redis.pipeline()
        pipe.hset(name, mapping={key: json.dumps(result) for key, result in results.items()})
        pipe.expire(name, _expire(res))
        pipe.execute()


def first_file_error(res: Resources, job_id: str, customer: str) -> str:
    """``, e.g. <the first failed file's reason>``: the alert then names the cause (a path, a user, a refusal)."""
    try:
        results = load_results(res, job_id, customer)
    except BackupError:
        return ""
    for key in sorted(results):
        if results[key].get("status") == "failed" and results[key].get("error"):
            return f", e.g. {results[key]['file']}: {results[key]['error'][:500]}"
    return ""


def customer_errors(res: Resources, job_id: str) -> dict[str, str]:
    """Errors that ended a customer's copy task, by customer."""
    with _redis_errors("read customer errors"):
        raw = res.redis.hgetall(_key(res, "errors", job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def record_customer_error(res: Resources, job_id: str, customer: str, exc: BaseException) -> dict:
    """Record that a customer's copy task ended in an error (data for collect); returns the task's answer."""
    err = classify(exc, copy_phase(customer)).one_line()
    name = _key(res, "errors", job_id)
    with _redis_errors("save customer error"):
        pipe = res.redis.pipeline()
        pipe.hset(name, customer, err)
        pipe.expire(name, _expire(res))
        pipe.execute()

    def change(rec):
        p = phase_entry(rec, copy_phase(customer))
        p.update(state="failed", finished=now(), error=err)
        rec["progress"].pop(copy_phase(customer), None)
    res.jobs.update(job_id, change)
    log.error("customer %s: copy task ended: %s", customer, err)
    return {"job_id": job_id, "customer": customer, "error": err}
