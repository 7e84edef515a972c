"""The ``customer-files`` workflow: every customer's new files → two verified backups → Hive count table.

Phases (Celery tasks): lock → discover → one ``copy:<customer>`` per customer
(a group, in parallel on the ``io`` queue) → collect (the chord's body) → flag.
The phase functions take a ``PhaseContext`` and return small JSON; none needs
a worker.

Layout: a customer's files are read from ``<source dir>/<customer>/`` and
copied to ``<primary>/<domain>/<file>`` and ``<secondary>/<domain>/<file>``.

This module holds the phases, in run order; the jobs they hand out live beside it:
  workflow       name, config section, phase names, the outputs phases hand on
  ledger         plan, per-file results, customer errors and the ledger, in Redis
  after_backup   moving or deleting a source once every copy (primary, and secondary if configured) is verified
  flag           the status flag file
and outside the package, reusable: ``backup.copy_engine`` (one read, every destination,
verified), ``backup.records`` (record counting), ``storage.locations`` (opening a configured
location), ``connectors.hive`` (the count table's SQL).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import posixpath
import re
import threading
import time
import unicodedata
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from base.errors import BackupError, ConfigError, FatalError, NotFound, RetryableError
from base.urls import redact_url_secrets
from base.identifiers import TableName, check_job_id
from base.text import CONTROL_CHARS, run_id
from backup.copy_engine import Destination, batches, copy_files
from backup.customer_files.after_backup import after_backup, move_base
from backup.customer_files.flag import outcome_of, write_fail_flag, write_flag
from backup.customer_files.ledger import (counts_loaded, customer_errors, first_file_error, known_files,
                                          ledger_field, load_plan, load_results, owed_jobs, plan_exists, plan_key,
                                          Listed, prune_ledger, record_customer_error, remember_many, save_plan,
                                          save_result, save_results)
from backup.customer_files.workflow import (DESTINATIONS, TARGET, WORKFLOW, Collected, Discovered, Flagged, config,
                                            copy_phase, phase_names)
from backup.enqueue import fail_request
from backup.jobs import TERMINAL, now, phase_entry
from backup.resources import Resources
from backup.retry import gave_up, next_retry
from backup.runner import PhaseContext, end_unsuccessfully, finish_job, take_lock
from backup.workflow import Phase, Workflow
from config.settings import CustomerFilesSettings
from connectors.hive import create_or_check_table, replace_rows, sql_value
from storage import StorageBackend
from storage.base import is_temp_name
from storage.locations import open_location

log = logging.getLogger(__name__)

# Named by the Celery tasks and the CLI from the package root.
__all__ = ["WORKFLOW", "DEFINITION", "TARGET", "DESTINATIONS", "config", "copy_phase", "phase_names", "submit", "lock_phase",
           "discover_phase", "copy_customer", "copy_retry_since", "record_customer_error", "collect_phase",
           "flag_phase", "write_fail_flag"]

MANIFEST_COLUMNS = ["customer", "domain", "file", "bytes", "records", "sha256", "primary_uri", "secondary_uri",
                    "copied_at", "status", "error"]
# The staging and final tables: the manifest's columns plus the job id.
TABLE_COLUMNS = [("customer", "STRING"), ("domain", "STRING"), ("file_name", "STRING"), ("bytes", "BIGINT"),
                 ("records", "BIGINT"), ("sha256", "STRING"), ("primary_uri", "STRING"), ("secondary_uri", "STRING"),
                 ("copied_at", "STRING"), ("status", "STRING"), ("error", "STRING"), ("job_id", "STRING")]
LOADED_STATUSES = ("copied", "present")  # rows merged into the final table
ROWS_PER_INSERT = 5000  # one INSERT OVERWRITE for a usual run; bounded statement size
MAX_SKIPPED_LISTED = 1000  # entries named in the record's outputs.skipped (all are counted and logged)


def domain_of(cfg: CustomerFilesSettings, name: str) -> str | None:
    """The first domain whose patterns match the file name ``name`` (``fnmatch.fnmatchcase``'s meaning; compiled
    once per settings: ``CustomerFilesSettings.domain_matchers``)."""
    for domain, matches in cfg.domain_matchers:
        if matches(name):
            return domain
    return None


# -- lock ------------------------------------------------------------------------

def submit(res: Resources, job_id: str | None = None) -> dict:
    """Create the job record; without a usable config it is recorded failed and nothing starts."""
    job_id = job_id or uuid.uuid4().hex
    try:
        cfg = config(res)
    except ConfigError as e:
        res.jobs.create(job_id, WORKFLOW, TARGET, {}, ["lock", "discover", "collect", "flag"])
        return fail_request(res, job_id, e)
    return res.jobs.create(job_id, WORKFLOW, TARGET, {"customers": list(cfg.customers)}, phase_names(cfg))


def lock_phase(ctx: PhaseContext) -> dict:
    """Take the (customer-files, all) lock or end the job as skipped, naming the holder."""
    return take_lock(ctx, WORKFLOW)


# -- discover --------------------------------------------------------------------

COUNTS = ("found", "planned", "unchanged", "settling", "deferred", "unmatched", "skipped", "refused")


def discover(res: Resources, cfg: CustomerFilesSettings) -> tuple[dict[str, list[dict]], dict[str, dict],
                                                                  dict[str, list[dict]], list[dict],
                                                                  dict[str, Listed]]:
    """The files a run would copy now: (plan per customer, counts per customer, deferred files per customer,
    entries skipped as not regular files, what was listed per customer for ``prune_ledger``).  Files refused for
    their names are in the plan, marked ``refused`` with the reason: they become failed manifest rows, never copies.

    Matched (a domain), settled (``settle_seconds``), not in the ledger in that state, oldest
    first, capped at ``max_files_per_run``.  Reads the source folders and the ledger only:
    the discover phase saves what this returns, ``plan`` shows it.
    """
    counts = {c: Counter() for c in cfg.customers}
    candidates: list[dict] = []
    horizon = time.time() - cfg.settle_seconds
    skipped: list[dict] = []
    refused: dict[str, list[dict]] = {c: [] for c in cfg.customers}
    listed = {c: Listed() for c in cfg.customers}

    def skip(customer: str, path: str, why: str) -> None:
        counts[customer]["skipped"] += 1
        if len(skipped) < MAX_SKIPPED_LISTED:
            skipped.append({"customer": customer, "path": printable(path), "reason": why})
        log.warning("customer %s: skipped %s: %s", customer, printable(path), why)

    with ExitStack() as stack:
        for index, url in enumerate(cfg.source_dirs):
            backend, root = open_location(res.settings, url)
            stack.enter_context(backend)
            if backend.stat(root) is None:
                raise NotFound(f"customer_files.source_dirs[{index}]: {backend.uri(root)} does not exist")
            for customer in cfg.customers:
                folder = posixpath.join(root, customer)
                try:
                    found = backend.lstat(folder)  # a customer folder that is a link is not followed
                    listing = backend.list(folder) if found is not None and found.is_dir else []
                except FatalError as e:  # this customer's folder only; the others are still backed up
                    skip(customer, folder, f"customer folder could not be listed: {e.one_line()}")
                    continue
                if found is not None and found.special:
                    skip(customer, folder, f"customer folder is a {found.special}, not followed")
                if found is None or not found.is_dir:
                    continue  # nothing delivered for this customer here yet
                entries = []
                for entry in listing:
                    if entry.is_dir or is_temp_name(entry.name):
                        continue
                    if entry.special:  # a link, fifo, device: reported, never read
                        skip(customer, entry.path, f"not a regular file: {entry.special}, not followed")
                        continue
                    problem = name_problem(entry.name)
                    if problem:  # a per-file failure with its reason (collect writes it to the manifest)
                        refused[customer].append({"customer": customer, "domain": domain_of(cfg, entry.name) or "-",
                                                  "source": index, "path": printable(entry.path), "size": entry.size,
                                                  "mtime": entry.mtime, "refused": problem})
                        continue
                    entries.append(entry)
                fields = [ledger_field(e.path, e.size, e.mtime) for e in entries]
                # The folder as its entries' paths name it (a trailing "/" in the setting or not).
                listed[customer].folders.add(posixpath.dirname(posixpath.join(folder, "-")))
                listed[customer].present.update(fields)
                known = known_files(res, customer, fields)
                listed[customer].in_ledger += sum(seen is not None for seen in known)
                for entry, seen in zip(entries, known):
                    domain = domain_of(cfg, entry.name)
                    if domain is None:
                        counts[customer]["unmatched"] += 1
                        continue
                    counts[customer]["found"] += 1
                    if entry.mtime > horizon:
                        counts[customer]["settling"] += 1
                    elif seen is not None:
                        counts[customer]["unchanged"] += 1
                    else:
                        candidates.append({"customer": customer, "domain": domain, "source": index,
                                           "path": entry.path, "size": entry.size, "mtime": entry.mtime})
    candidates.sort(key=lambda f: (f["mtime"], f["customer"], f["path"]))
    chosen, deferred = candidates[:cfg.max_files_per_run], candidates[cfg.max_files_per_run:]
    plan: dict[str, list[dict]] = {c: [] for c in cfg.customers}
    later: dict[str, list[dict]] = {c: [] for c in cfg.customers}
    for item in chosen:
        plan[item["customer"]].append(item)
        counts[item["customer"]]["planned"] += 1
    for item in deferred:
        later[item["customer"]].append(item)
        counts[item["customer"]]["deferred"] += 1
    for customer, items in refused.items():  # planned as failures: no copy, a manifest row with the reason
        plan[customer].extend(items)
        counts[customer]["refused"] += len(items)
    per_customer = {c: {k: counts[c][k] for k in COUNTS} for c in cfg.customers}
    return plan, per_customer, later, skipped, listed


def discover_phase(ctx: PhaseContext) -> dict:
    """Choose the files of this run: matched, settled, not in the ledger, oldest first, capped."""
    res, cfg = ctx.res, config(ctx.res)
    plan, per_customer, _, skipped, listed = discover(res, cfg)
    save_plan(res, ctx.job_id, plan)
    ctx.commit_check()  # fenced: a run that lost its lock leaves the ledger to the run holding it
    pruned = sum(prune_ledger(res, customer, what) for customer, what in listed.items())
    totals = {k: sum(v[k] for v in per_customer.values()) for k in COUNTS}
    note = (f"{totals['planned']} to copy, {totals['unchanged']} unchanged, {totals['settling']} settling, "
            f"{totals['deferred']} deferred to the next run")
    if totals["skipped"] or totals["refused"]:
        note += f"; {totals['skipped']} skipped (not regular files), {totals['refused']} refused (bad names)"
    if pruned:
        note += f"; {pruned} ledger entries of files gone from the source folders removed"
    outputs = Discovered(customers=per_customer, discovered=totals, skipped=skipped, ledger_pruned=pruned)
    ctx.done(outputs.as_outputs(), note=note)
    return {"job_id": ctx.job_id, **totals}


def name_problem(name: str) -> str | None:
    """Why a file name cannot be backed up (a per-file failure), or None.

    Not valid UTF-8 (the listing decodes it with surrogate escapes: no Redis field, JSON row or Hive
    value can hold it), or a control character (``\\r``, ``\\n``: it would reach batch files, line-based
    checksums and one-line messages).  Other Unicode, U+2028 included, is a file name like any other.
    """
    if _UNDECODABLE.search(name):
        return "file name is not valid UTF-8"
    bad = _CONTROL_CHAR.search(name)
    if bad is not None:
        return f"file name contains the control character U+{ord(bad.group()):04X}"
    return None


# One regex pass each: discovery runs them on every listed name.  Surrogate escapes of undecodable bytes;
# Unicode's control characters (category Cc), exactly: C0, DEL and C1.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_CONTROL_CHAR = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with undecodable bytes as ``\\xNN`` and control characters escaped: safe for records and rows."""
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if unicodedata.category(c) != "Cc" else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in raw)


# -- copy ------------------------------------------------------------------------

def copy_customer(ctx: PhaseContext, customer: str) -> dict:
    """Copy one customer's planned files to both locations; per-file failures are data in the results.

    Files whose copy failed for a transient reason only (every failure of the retryable family of
    ``base.errors``: a connection refused, reset or timed out, a stalled transfer, a copy of ours that
    did not verify) are retried within ``retry.budget``: this function raises ``RetryableError`` and
    the copy task is retried by Celery (``tasks/customer_files.py``, ``PhaseTask.retry_or_raise``), so
    the wait holds no worker slot and each attempt gets its own time limits and delivery count.  The
    next attempt copies only those files: their results are kept marked ``retryable`` and read as not
    done.  A file with a fatal failure (a source that vanished or changed, a permission denied, a
    different file at the final name) is not retried; it fails the customer (PARTIAL, one alert) as
    before.  See ``_retry_or_give_up`` for the budget's clock.

    Invariants: every attempt enters the phase again (delivery count, lock renewal) and checks the lock
    fence before each batch, as the first one does; a destination that already holds a file verifies it
    (``present``) instead of writing it again, and a copy is renamed to its final name only once verified,
    so retries copy nothing twice and leave nothing half-written at a final name (a temporary file of a
    cut attempt is swept by the next attempt's first write in that folder).  Cost of a retry: the plan and
    results read again (two Redis round trips), each destination opened again, and the files that one
    destination already had read back once to be verified there.
    """
    res, cfg = ctx.res, config(ctx.res)
    plan = load_plan(res, ctx.job_id, customer)
    # A transient failure of an earlier attempt is not done: this attempt copies that file again.
    done = {key: r for key, r in load_results(res, ctx.job_id, customer).items() if not r.get("retryable")}
    for item in plan:  # refused at discovery (a bad name): a failure with its reason, nothing is read
        if item.get("refused") and plan_key(item) not in done:
            done[plan_key(item)] = refused_result(item)
            save_result(res, ctx.job_id, customer, plan_key(item), done[plan_key(item)])
    todo = [item for item in plan if plan_key(item) not in done]
    progress = {"files_done": len(plan) - len(todo), "files_total": len(plan),
                "failed": sum(r["status"] == "failed" for r in done.values()),
                "bytes_done": sum(item["size"] for item in plan if plan_key(item) in done),
                "bytes_total": sum(item["size"] for item in plan)}
    ctx.progress(force=True, **progress)

    counting = threading.Lock()

    def on_bytes(n: int) -> None:  # called by the transfer threads
        with counting:
            progress["bytes_done"] += n
            snapshot = dict(progress)
        ctx.progress(**snapshot)

    where = cfg.customers[customer]
    moved_to = move_base(res, cfg) if todo else None
    dests = [Destination(role, getattr(where, role), read_back_local=cfg.read_back_local_copies) for role in where.roles()]
    with ExitStack() as stack:
        if todo:
            for dest in dests:
                dest.open(res.settings, res.bandwidth_budget)
                if dest.backend is not None:
                    stack.enter_context(dest.backend)
        sources: dict[int, StorageBackend] = {}
        roots: dict[int, str] = {}

        def source_of(item: dict) -> StorageBackend:
            if item["source"] not in sources:
                backend, roots[item["source"]] = open_location(res.settings, cfg.source_dirs[item["source"]])
                sources[item["source"]] = stack.enter_context(backend)
            return sources[item["source"]]

        def root_of(item: dict) -> str:
            source_of(item)
            return roots[item["source"]]

        checked = []
        for item in todo:  # the plan is read back from Redis: only this customer's files in its source folder
            problem = plan_item_problem(cfg, customer, item, root_of)
            if problem is None:
                checked.append(item)
                continue
            log.error("customer %s: plan entry refused: %s", customer, problem)
            bad = {"customer": customer, "domain": "-", "path": printable(str(item.get("path"))), "size": 0,
                   "refused": problem}
            done[plan_key(item)] = refused_result(bad)
            save_result(res, ctx.job_id, customer, plan_key(item), done[plan_key(item)])
            progress["files_done"] += 1
            progress["failed"] += 1

        verified_now = 0  # files verified by this attempt (progress: the retry budget's clock starts again)
        for batch in batches(checked):
            ctx.commit_check()  # stop at once if another run took over the lock (each retry checks it too)
            before = progress["bytes_done"]
            copied = copy_files(batch, source_of, dests, on_bytes)
            progress["bytes_done"] = before + sum(item["size"] for item in batch)
            # The engine's results, named after the customer and domain they belong to (the manifest's rows).
            results = [{"customer": item["customer"], "domain": item["domain"], **copy}
                       for item, copy in zip(batch, copied)]
            verified = [(item, result) for item, result in zip(batch, results) if result["status"] != "failed"]
            verified_now += len(verified)
            # One round trip for the batch's ledger entries, then the sources are moved or deleted, then one
            # for its results: a task redelivered in between copies nothing again (the copies are found
            # present) and still moves the sources; a file is in the ledger before its source goes.
            remember_many(res, ctx.job_id, customer, verified)
            for item, result in verified:
                problem = after_backup(cfg, source_of(item), item, moved_to)
                if problem:
                    result["error"] = problem
            save_results(res, ctx.job_id, customer, {plan_key(item): result for item, result in zip(batch, results)})
            for item, result in zip(batch, results):
                done[plan_key(item)] = result
                progress["files_done"] += 1
                progress["failed"] += result["status"] == "failed"
            ctx.progress(**progress)
    ctx.progress(force=True, **progress)
    gave_up_note = None
    transient = {key: r for key, r in done.items() if r["status"] == "failed" and r.get("retryable")}
    if transient:
        gave_up_note = _retry_or_give_up(ctx, customer, transient, progressed=verified_now > 0)
    summary = summarize(done.values())
    note = f"{summary['copied']} copied, {summary['present']} already present, {summary['failed']} failed"
    if gave_up_note:
        note += f"; {gave_up_note}"
    # The last progress stays: a customer copied between two looks of `backupctl run --wait` still shows its files.
    ctx.done(note=note, state="failed" if summary["failed"] else "success", keep_progress=True)
    return {"job_id": ctx.job_id, "customer": customer, **summary}


def _retry_or_give_up(ctx: PhaseContext, customer: str, transient: dict[str, dict], progressed: bool) -> str:
    """Raise ``RetryableError`` (the task retries) while ``retry.budget`` allows; else mark the ``transient``
    results as given up (their error says so) and return the phase note.

    The budget's clock (``retry_since`` on the phase entry, read by the task through ``copy_retry_since``)
    starts at the end of the first attempt that met a transient failure, and starts again after an
    attempt that verified at least one file: so an outage shorter than ``retry.budget`` is ridden
    through however long the copies before it took (not counted from the phase's first start, which
    for a long copy phase would leave no retry at all), and every restart of the clock has copied
    something, which bounds the attempts.  Waits and the optional ``retry.max_retries`` cap count the
    task's retries (``PhaseTask.retry_or_raise``).  The task decides again, a moment later, on the same
    clock; if the budget ran out in between, it records the customer error instead (still PARTIAL, one
    alert).
    """
    res, policy = ctx.res, ctx.res.settings.retry
    entry = phase_entry(ctx.rec, ctx.name)
    t = time.time()
    since = t if progressed or not entry.get("retry_since") else entry["retry_since"]
    retries = max(0, (entry.get("attempts") or 1) - 1)
    key = min(transient)
    why = (f"{len(transient)} file(s) failed for a transient reason, e.g. {transient[key]['file']}: "
           f"{(transient[key]['error'] or '')[:300]}")
    if next_retry(policy, retries, t - since) is not None:
        def change(rec):
            p = phase_entry(rec, ctx.name)
            p.update(retry_since=since, last_error=why)
        res.jobs.update(ctx.job_id, change)
        raise RetryableError(why)
    spent = gave_up(policy, retries, t - since)
    for result in transient.values():
        result["error"] = f"{result['error']} ({spent})"
    save_results(res, ctx.job_id, customer, transient)
    log.error("customer %s: %s; %s", customer, why, spent)
    return f"{len(transient)} transient failure(s): {spent}"


def copy_retry_since(rec: dict, customer: str) -> float | None:
    """When the retry budget of a customer's copy task started (``_retry_or_give_up``): its clock, else the
    phase's first start (a retryable error raised by the phase itself, such as a Redis blip)."""
    entry = phase_entry(rec, copy_phase(customer))
    return entry.get("retry_since") or entry.get("started")


def plan_item_problem(cfg: CustomerFilesSettings, customer: str, item: dict, root_of: Callable[[dict], str]) -> str | None:
    """Why a planned file (read back from Redis) is not one discovery could have planned, or None: the plan is
    data anyone with Redis write access could change, and it must never pick what is read or where it goes."""
    if not isinstance(item, dict) or item.get("customer") != customer or item.get("domain") not in cfg.domains:
        return "plan entry of another customer or an unknown domain (the plan was changed)"
    source, path = item.get("source"), item.get("path")
    if not isinstance(source, int) or isinstance(source, bool) or not 0 <= source < len(cfg.source_dirs) \
            or not isinstance(path, str) or not isinstance(item.get("size"), int):
        return "malformed plan entry (the plan was changed)"
    name = posixpath.basename(path)
    if posixpath.dirname(path) != posixpath.join(root_of(item), customer) or name_problem(name) \
            or name in ("", ".", "..") or domain_of(cfg, name) != item["domain"]:
        return f"plan entry {printable(path)[:200]!r} is not a file of {customer}'s source folder (the plan was changed)"
    return None


def refused_result(item: dict) -> dict:
    """The manifest row of a file refused at discovery."""
    return {"customer": item["customer"], "domain": item["domain"], "file": posixpath.basename(item["path"]),
            "bytes": item["size"], "records": None, "sha256": None, "primary_uri": None, "secondary_uri": None,
            "copied_at": None, "status": "failed", "error": f"not copied: {item['refused']}"}


def summarize(results) -> dict:
    """Counts over per-file results."""
    out = {"files": 0, "copied": 0, "present": 0, "failed": 0, "bytes": 0, "records": 0}
    for r in results:
        out["files"] += 1
        out[r["status"]] += 1
        if r["status"] != "failed":
            out["bytes"] += r["bytes"] or 0
            out["records"] += r["records"] or 0
    return out


# -- collect ---------------------------------------------------------------------

#: manifest fields that can hold a URL with a password (a destination's URI, a server's error text); the others are
#: names checked at discovery (a file name holds no "/", so no URL), hashes, sizes, times and statuses
MAY_HOLD_SECRETS = ("primary_uri", "secondary_uri", "error")


def manifest_rows(res: Resources, rec: dict) -> list[dict]:
    """One row per planned file, in plan order; a file its task never reached is a failed row.  Cost: dominated by
    reading the results back from Redis (about 0.9 s for 50,000 files here)."""
    cfg = config(res)
    errors = customer_errors(res, rec["job_id"])
    rows = []
    for customer in cfg.customers:
        results = load_results(res, rec["job_id"], customer)
        for item in load_plan(res, rec["job_id"], customer):
            row = results.get(plan_key(item))
            if row is None:
                why = errors.get(customer, "its copy task did not finish")
                row = {"customer": customer, "domain": item["domain"], "file": posixpath.basename(item["path"]),
                       "bytes": item["size"], "records": None, "sha256": None, "primary_uri": None,
                       "secondary_uri": None, "copied_at": None, "status": "failed", "error": f"not copied: {why}"}
            # The manifest and the Hive count tables never repeat a URL password (a server's error text may).
            row = dict(row)
            for k in MAY_HOLD_SECRETS:
                if row.get(k).__class__ is str:
                    row[k] = redact_url_secrets(row[k])
            rows.append(row)
    return rows


def owed_rows(res: Resources, job_id: str) -> tuple[dict[str, list[dict]], list[str]]:
    """The count rows other runs owe the count table: ``({job: its copied and present rows}, [jobs whose plan is gone])``.

    A run whose collect never succeeded (it failed in collect, or the job failed before) has files in the ledger that
    no later run plans again; their rows are loaded by the next collect, under their own job's id.  A run still going
    (not possible while this run holds the lock, but a record is only read, not trusted) is left for later.  Costs one
    Redis round trip, plus a few per owed run (usually none).
    """
    owed, expired = {}, []
    for job in owed_jobs(res, job_id):
        rec = res.jobs.find(job)
        if rec is not None and rec["state"] not in TERMINAL:
            continue
        if not plan_exists(res, job):
            expired.append(job)
            continue
        owed[job] = [r for r in manifest_rows(res, {"job_id": job}) if r["status"] in LOADED_STATUSES]
    return owed, expired


def write_manifest(path: Path, rows: list[dict]) -> None:
    """The manifest CSV, written to a temp name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(MANIFEST_COLUMNS)
        # None is written as an empty cell by the csv module itself
        writer.writerows([csv_cell(v) if v.__class__ is str else v for v in map(row.get, MANIFEST_COLUMNS)]
                         for row in rows)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


#: first characters that make a spreadsheet read a cell as a formula (and ' itself, so the escape reverses)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(value) -> str | int:
    """A manifest cell: text that a spreadsheet would run as a formula (``=HYPERLINK(…)`` as a file name) gets a
    leading ``'``, as spreadsheets themselves write such text; ``csv_value`` reverses it."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """The value of a manifest cell written by ``csv_cell``."""
    return cell[1:] if cell.startswith("'") else cell


def ensure_table(hive, table: TableName) -> str:
    """Create a count table (staging or final) if it is missing; refuse one whose columns differ."""
    return create_or_check_table(hive, table, TABLE_COLUMNS)


#: count tables this worker process has created or checked, by (HiveServer2 host, port, table): a collect checks
#: each once per process, not once per run; a table dropped since is found by the load's "not found" error and
#: ensured again (``load_into_hive``)
_ENSURED: set[tuple[str, int, str]] = set()


def _ensure_tables(hive, tables: list[TableName], *, again: bool = False) -> None:
    """Create or check ``tables`` unless this process already did (``again``: do it whatever the memory says)."""
    server = (hive.settings.host, hive.settings.port)
    for table in tables:
        if again or (*server, table.sql) not in _ENSURED:
            ensure_table(hive, table)
            _ENSURED.add((*server, table.sql))


def lookup_reason(rows: list[dict], owed: dict[str, list[dict]] | None, first_delivery: bool) -> str | None:
    """Why a collect's load must look its rows up in the final count table; None when none of them can be there yet.

    A row can already be in the final table only if
    - an earlier delivery of this collect ran its statement (a Celery retry, or a redelivery after a lost worker:
      not ``first_delivery``),
    - it is owed by an earlier run, whose own collect may have committed before it failed, or
    - its file (same customer, domain, name and content) was counted by an earlier run.  That run copied it to the
      destinations, so an identical file is still at one of them: the copy found it there (``already_at`` of its
      result, ``present``) unless every copy of it was removed since, and a file copied anew to every destination
      is a new backup.  A result without ``already_at`` (written by a version before it) counts as found there.
    Cost: none here; it spares a usual run the read of the whole final table, the one per-run cost that grew with
    every file ever backed up (``bench/count_table_growth.py``)."""
    if not first_delivery:
        return "an earlier delivery of this collect may have loaded its rows"
    if any(owed.values() if owed else ()):
        return "rows owed by earlier runs"
    found = sum(1 for r in rows if r["status"] in LOADED_STATUSES and r.get("already_at") != [])
    if found:
        return f"{found} file(s) found already at a destination: maybe counted by an earlier run"
    return None


def load_into_hive(res: Resources, rows: list[dict], job_id: str, commit_check: Callable[[], None],
                   owed: dict[str, list[dict]] | None = None, first_delivery: bool = False) -> dict:
    """Staging ← manifest (and the rows ``owed`` by earlier runs, each under its own job id); final ← staging rows not
    yet in it (by customer, domain, file and SHA-256); the rows of this run now in final.

    The rows are looked up in the final table unless ``lookup_reason`` finds that none can be there (the first
    delivery of a collect, nothing owed, every file written anew to every destination: a usual run).  Then the
    final table is not read at all, neither to merge nor to count afterwards: every row with a loaded status is
    added, and the staging table's count proves the server read every row.  The result's ``final_lookup`` says
    which way it went and why.

    On Spark with ``count_load_folder`` set: the rows as one JSON-lines file the server reads (``_load_from_file``),
    any number of rows in one statement.  Else on Spark, up to ``ROWS_PER_INSERT`` rows (a usual run): one
    statement writes both tables from the same rows given as VALUES literals (a multi-insert: ``FROM …
    INSERT OVERWRITE staging … INSERT INTO final … WHERE not in final``), then one count.  More rows, or
    another engine (Hive, Impala): the staging load in statements of
    ``ROWS_PER_INSERT`` rows, one merge, the engine's REFRESH (not on Spark: it refreshes a table it writes
    itself) and the count.  Either way a rerun or a redelivered
    collect never counts a file twice, and the lock is checked before anything is written to the final table.
    The tables are created or checked once per worker process; a "not found" error (a table dropped since)
    ensures them again and runs the load once more, and a fatal error checks them again (a table replaced since
    by one with other columns is named as such).
    """
    cfg = config(res)
    staging, final = TableName.parse(cfg.staging_table), TableName.parse(cfg.final_table)
    values = [[r.get(c) for c in MANIFEST_COLUMNS] + [job_id] for r in rows]
    values += [[r.get(c) for c in MANIFEST_COLUMNS] + [job] for job, owed_by in (owed or {}).items() for r in owed_by]
    why = lookup_reason(rows, owed, first_delivery)
    look_up = why is not None
    with res.hive() as hive:
        _ensure_tables(hive, [staging, final])
        spark = hive.engine() == "spark"
        if spark and cfg.count_load_folder:
            def load() -> tuple[int | None, str]:
                return _load_from_file(res, hive, staging, final, values, job_id, commit_check, look_up)
        else:
            def load() -> tuple[int | None, str]:
                return _load(hive, staging, final, values, commit_check, spark, look_up)
        try:
            staged, refreshed = load()
        except NotFound:
            log.warning("count table %s or %s not found: creating it again and loading once more", staging, final)
            _ensure_tables(hive, [staging, final], again=True)
            staged, refreshed = load()
        except FatalError:
            # A table replaced since this process checked it fails the statement in the engine's words ("too many
            # data columns"); checking again names the difference (FatalError: table … has columns …), else the
            # statement's own error stands.
            _ensure_tables(hive, [staging, final], again=True)
            raise
        if look_up:
            # A load from a file has not counted what the server read: the same statement counts staging too.
            counted, in_staging = counted_once(hive, final, [job_id, *(owed or {})],
                                               staging if staged is None else None)
            added = counted[job_id]
        else:  # nothing looked up, so every loaded row was added: the final table is not read (it only grows)
            in_staging = None if staged is not None else int(hive.query(
                f"SELECT count(*) FROM {staging.sql}", f"count the rows of {staging}")[0][0])
            added = sum(1 for r in rows if r["status"] in LOADED_STATUSES)
    if staged is None:
        if in_staging != len(values):
            raise FatalError(f"{staging} holds {in_staging} rows after loading the count rows file, not the "
                             f"{len(values)} written to {cfg.count_load_folder}: is count_load_server_path "
                             f"({cfg.count_load_server_path}) the same folder as count_load_folder?")
        staged = in_staging
    return {"staging_rows": staged, "final_rows_added": added, "refresh": refreshed,
            "final_lookup": f"looked up: {why}" if look_up else "skipped: no file of this run can be counted yet "
                            "(first delivery, nothing owed, every file written anew to every destination)"}


def counted_once(hive, final: TableName, job_ids: list[str],
                 staging: TableName | None = None) -> tuple[dict[str, int], int | None]:
    """Rows of each of ``job_ids`` in ``final``, checked to hold each file once (FatalError naming the files
    otherwise), and the rows of ``staging`` if given (None if not): one statement either way.

    Why: the merge adds only rows the final table lacks, but two merges running at once both find a file
    missing and both add it.  A worker killed during its merge does not leave one running (HiveServer2
    closes the session of a dropped connection and cancels its statement: measured, a Spark Thrift
    Server INSERT of 12 s never committed when its client was SIGKILLed 4 s in), yet a merge the server
    had not cancelled yet when the redelivered one ran would count a file twice: this makes it loud
    rather than silent (the extra rows are for an operator to remove; the alert names them).
    Cost: the count the collect always made, with a distinct count beside it (one scan of the rows of
    these runs; the count table's Parquet footers let the server skip the files of other runs), and the staging
    table's count in the same statement (a round trip and a Spark job fewer than a statement of its own); the files
    are listed only when the two differ."""
    ids = ", ".join(sql_value(j) for j in job_ids)
    # NULLs as '' (count(DISTINCT ...) skips a row with a NULL in it; a loaded row has none, and if one did, it
    # must not read as a file counted twice)
    key = ", ".join(f"coalesce(`{c}`, '')" for c in ("customer", "domain", "file_name", "sha256"))
    # The staging count's row has a NULL job id (no run has one: job ids are checked hex).
    also = f" UNION ALL SELECT NULL, count(*), 0 FROM {staging.sql}" if staging else ""
    found, in_staging = {}, None
    for j, rows, files in hive.query(
            f"SELECT `job_id`, count(*), count(DISTINCT {key}) FROM {final.sql} WHERE `job_id` IN ({ids}) "
            f"GROUP BY `job_id`{also}",
            f"count rows of this run in {final}" + (f" and of {staging}" if staging else "")):
        if j is None:
            in_staging = int(rows)
        else:
            found[str(j)] = (int(rows), int(files))
    if any(rows != files for rows, files in found.values()):
        twice = hive.query(f"SELECT `job_id`, `customer`, `domain`, `file_name`, count(*) FROM {final.sql} "
                           f"WHERE `job_id` IN ({ids}) GROUP BY `job_id`, `customer`, `domain`, `file_name`, `sha256` "
                           f"HAVING count(*) > 1 LIMIT 5",
                           f"list files counted more than once in {final}")
        extra = sum(rows - files for rows, files in found.values())
        raise FatalError(f"{final} counts {extra} file(s) more than once for job(s) "
                         f"{', '.join(j for j, (r, f) in found.items() if r != f)} (two merges ran at once?): "
                         + "; ".join(f"{c}/{d}/{n} {k} times (job {j})" for j, c, d, n, k in twice)
                         + "; delete the extra rows by hand (each file's rows are identical)")
    return {j: found.get(j, (0, 0))[0] for j in job_ids}, in_staging


def _load(hive, staging: TableName, final: TableName, values: list[list], commit_check: Callable[[], None],
          spark: bool, look_up: bool = True) -> tuple[int, str]:
    """Write ``values`` (rows in table column order) to staging and the new ones to final (without ``look_up``:
    every row of a loaded status, the final table not read); (rows staged, refresh)."""
    names = [name for name, _ in TABLE_COLUMNS]
    cols = ", ".join(f"`{c}`" for c in names)
    statuses = ", ".join(sql_value(s) for s in LOADED_STATUSES)
    if not spark or len(values) > ROWS_PER_INSERT:  # several staging statements, then one merge
        staged = replace_rows(hive, staging, values, f"load manifest into {staging}", ROWS_PER_INSERT)
        commit_check()
        key = " AND ".join(f"s.`{c}` = f.`{c}`" for c in ("customer", "domain", "file_name", "sha256"))
        # Only rows the final table lacks: a rerun or a redelivered collect never counts a file twice.
        lacking = (f"LEFT OUTER JOIN {final.sql} f ON {key} WHERE f.`file_name` IS NULL AND" if look_up else "WHERE")
        hive.execute(f"INSERT INTO TABLE {final.sql} SELECT s.* FROM {staging.sql} s {lacking} "
                     f"s.`status` IN ({statuses})", f"merge {staging} into {final}")
        return staged, "not needed (Spark refreshes a table it writes)" if spark else hive.refresh(final)
    rows = ", ".join("(" + ", ".join(sql_value(v) for v in row) + ")" for row in values)
    commit_check()  # fenced: a collect that lost its lock writes neither table
    hive.execute(_multi_insert(staging, final, f"(VALUES {rows}) AS r({cols})", len(values), look_up),
                 f"load manifest into {staging} and merge the new rows into {final}")
    return len(values), "not needed (Spark refreshes a table it writes)"


#: a run with at most this many rows hands the server its keys to broadcast (``_multi_insert``): about 150 bytes a
#: key in the server's memory; a larger run leaves the join to the server's planner (correct, with a shuffle of the
#: whole count table)
BROADCAST_KEYS_MAX = 250_000


def _multi_insert(staging: TableName, final: TableName, source: str, rows: int, look_up: bool = True) -> str:
    """Spark's one statement writing both tables from the ``rows`` rows of ``source`` (a relation in table column
    order): staging overwritten with all of them, final given those it lacks (by customer, domain, file and
    SHA-256) whose status is loaded, so a rerun or a redelivered collect never counts a file twice.  Without
    ``look_up`` (``lookup_reason``: none of the rows can be in final yet) final is given every row of a loaded
    status and is not read: a cost that does not grow with the count table.

    Cost: the count table is read once, its four key columns only, each row looked up among this run's keys
    (broadcast to every task: a semi-join), and only the rows found (usually none: a file counted by an earlier
    run or an earlier attempt) are made distinct and joined back.  The cost still grows with the count table,
    by that scan alone: a 50,000-row run's load took 2.4 / 3.0 / 4.3 s against a table of 0 / 1 / 5 million rows.
    Before, every key of the count table was made distinct, then joined with the run's rows: 1.9 / 9.5 / 28.2 s
    (``bench/count_table_growth.py``, 2026-12-06).  Against an empty table this reads the run's rows twice, about
    0.5 s more: the price of a load that no longer grows by 5-7 s per million rows the table keeps."""
    cols = ", ".join(f"`{name}`" for name, _ in TABLE_COLUMNS)
    statuses = ", ".join(sql_value(s) for s in LOADED_STATUSES)
    if not look_up:
        return (f"FROM (SELECT * FROM {source}) s INSERT OVERWRITE TABLE {staging.sql} SELECT {cols} "
                f"INSERT INTO TABLE {final.sql} SELECT {cols} WHERE s.`status` IN ({statuses})")
    keys = ("customer", "domain", "file_name", "sha256")
    on = " AND ".join(f"k.`{c}` = f.`{c}`" for c in keys)
    hint = "/*+ BROADCAST(k) */ " if rows <= BROADCAST_KEYS_MAX else ""
    # The run's rows are named once (a CTE) and read twice: to find their keys in the count table, and as the rows.
    found = (f"SELECT {hint}f.`customer`, f.`domain`, f.`file_name`, f.`sha256` FROM {final.sql} f "
             f"LEFT SEMI JOIN v k ON {on}")
    # Each found key once (DISTINCT): a joined row never multiplies a staged one.
    known = f"SELECT DISTINCT `customer`, `domain`, `file_name`, `sha256`, true AS `in_final` FROM ({found}) x"
    key = " AND ".join(f"v.`{c}` = f.`{c}`" for c in keys)
    return (f"WITH v AS (SELECT * FROM {source}) "
            f"FROM (SELECT v.*, f.`in_final` FROM v LEFT OUTER JOIN ({known}) f ON {key}) s "
            f"INSERT OVERWRITE TABLE {staging.sql} SELECT {cols} "
            f"INSERT INTO TABLE {final.sql} SELECT {cols} WHERE s.`in_final` IS NULL AND s.`status` IN ({statuses})")


#: the temporary view over a run's rows file (it lives in one server session only)
ROWS_VIEW = "mb_count_rows"


def _load_from_file(res: Resources, hive, staging: TableName, final: TableName, values: list[list], job_id: str,
                    commit_check: Callable[[], None], look_up: bool = True) -> tuple[None, str]:
    """Spark with ``count_load_folder``: the rows as one JSON-lines file (``<job id>.json``) in that folder, then in
    one server session a temporary view over it (``count_load_server_path``: the same folder as the server sees
    it) and the multi-insert from the view; the file is removed afterwards.  (None: the staging table's rows are
    counted by ``load_into_hive``, in the statement that checks the count table, and must be the rows written.)

    Why: Spark parses a VALUES literal per row (about 0.65 ms a row here: 13 s of a 20,000-file run); reading a
    file is one scan.  JSON, not CSV: every string (quotes, ``;``, newlines in an error text) and every NULL comes
    back exactly as written, with no dialect to agree on.
    Invariants: the server reads only a complete file (written to a temporary name, published by rename); a
    malformed line fails the statement (``FAILFAST``) and the staging table must then hold exactly the rows
    written, so no row is dropped silently; the lock is checked just before the statement that writes the
    tables.  A redelivered collect writes the file again under the same name.
    Cost: the file (about 370 bytes a row), one Spark job."""
    cfg = config(res)
    backend, folder = open_location(res.settings, cfg.count_load_folder)
    name = f"{check_job_id(job_id)}.json"
    path = posixpath.join(folder, name)
    names = [column for column, _ in TABLE_COLUMNS]
    # Control characters as spaces, as a VALUES literal has always stored them (``sql_value``): one table whichever
    # way it was loaded.
    body = "".join(_json_line(names, row) for row in values).encode()
    backend.mkdir(folder)
    backend.delete(path)  # a redelivered collect's file, or nothing
    written = backend.write_temp(path, [body])
    backend.publish(written.path, path)
    schema = ", ".join(f"`{column}` {kind}" for column, kind in TABLE_COLUMNS)
    server_file = cfg.count_load_server_path.rstrip("/") + "/" + name
    try:
        with hive.session(f"load {server_file} into {staging} and {final}") as session:
            try:
                session.execute(f"CREATE OR REPLACE TEMPORARY VIEW `{ROWS_VIEW}` ({schema}) USING json "
                                f"OPTIONS (path {sql_value(server_file)}, mode 'FAILFAST')",
                                f"read the count rows at {server_file}")
            except NotFound as e:  # not a missing table: a setting that names another folder than the one written
                raise FatalError(f"{e.one_line()} (written to {backend.uri(path)}: count_load_server_path must "
                                 f"name the folder count_load_folder writes to, as the HiveServer2 sees it)") from e
            commit_check()  # fenced: a collect that lost its lock writes neither table
            session.execute(_multi_insert(staging, final, f"`{ROWS_VIEW}`", len(values), look_up),
                            f"load {server_file} into {staging} and merge the new rows into {final}")
    finally:
        try:
            backend.delete(path)
        except BackupError as e:
            log.warning("could not remove the count rows file %s: %s", backend.uri(path), e.one_line())
    return None, "not needed (Spark refreshes a table it writes)"  # staging counted by the caller (counted_once)


def _json_line(names: list[str], row: list) -> str:
    """One row of the count rows file: a JSON object and a newline, control characters as spaces."""
    line = json.dumps(dict(zip(names, row)))
    if "\\" in line:  # an escape, maybe of a control character (rare: most rows have none): clean and encode again
        line = json.dumps({name: CONTROL_CHARS.sub(" ", v) if isinstance(v, str) else v for name, v in zip(names, row)})
    return line + "\n"


def collect_phase(ctx: PhaseContext) -> dict:
    """The chord's body: manifest CSV → Hive staging → final count table; totals per customer."""
    res, rec = ctx.res, ctx.rec
    cfg = config(res)
    rows = manifest_rows(res, rec)
    owed, expired = owed_rows(res, ctx.job_id)
    manifest = res.settings.path(cfg.manifest_dir) / f"{run_id(rec['created'], rec['job_id'])}.csv"
    # The manifest is written while the server loads the rows (the load mostly waits for it): its 0.5-0.8 s of CPU
    # for 50,000 rows overlaps the server's statement instead of preceding it (the collect's wall time did not
    # show it beyond its run-to-run spread here).  It is written whether the load succeeds or not (the pool waits
    # for it on the way out); a manifest that cannot be written fails the collect, whose retry looks its rows up.
    with ThreadPoolExecutor(1, thread_name_prefix="manifest") as pool:
        written = pool.submit(write_manifest, manifest, rows)
        if rows or any(owed.values()):
            first = phase_entry(ctx.rec, ctx.name)["deliveries"] == 1  # no earlier delivery can have loaded the rows
            hive = load_into_hive(res, rows, ctx.job_id, ctx.commit_check, owed, first_delivery=first)
        else:
            hive = {"staging_rows": 0, "final_rows_added": 0, "refresh": "skipped (nothing to load)"}
        written.result()
    if owed:
        hive["owed_rows_loaded"] = {job: len(owed_by) for job, owed_by in owed.items()}
    if expired:  # their rows cannot be rebuilt: say so where an operator looks (the record, the log)
        hive["owed_rows_expired"] = expired
        log.error("count rows of run(s) %s were never loaded and their results have expired "
                  "(celery.result_expires): their files are backed up but missing from %s",
                  ", ".join(expired), cfg.final_table)
    counts_loaded(res, [ctx.job_id, *owed, *expired])
    errors = customer_errors(res, ctx.job_id)
    customers = Discovered.read(rec).customers  # discover's counts, completed here with the copies'
    rows_of = defaultdict(list)
    for row in rows:
        rows_of[row["customer"]].append(row)
    for customer in cfg.customers:
        counts = summarize(rows_of[customer])
        entry = customers.setdefault(customer, {})
        entry.update({k: counts[k] for k in ("copied", "present", "failed", "bytes", "records")})
        entry["skipped"] = sum(entry.get(k, 0) for k in ("unchanged", "settling", "deferred"))
        entry["error"] = errors.get(customer)
    totals = {k: sum(c.get(k) or 0 for c in customers.values())
              for k in ("found", "planned", "unchanged", "settling", "deferred", "skipped", "copied", "present",
                        "failed", "bytes", "records")}
    ctx.done(Collected(customers=customers, totals=totals, manifest=str(manifest), hive=hive).as_outputs(),
             note=f"{len(rows)} manifest rows; {hive['final_rows_added']} rows added to {cfg.final_table}"
                  + (f"; the rows of {len(owed)} earlier run(s) whose collect never succeeded loaded too" if owed else "")
                  + (f"; {len(expired)} earlier run(s) owed rows whose results expired: see the log" if expired else ""))
    return {"job_id": ctx.job_id, **totals}


# -- flag ------------------------------------------------------------------------

def flag_phase(ctx: PhaseContext) -> dict:
    """Write SUCCESS / PARTIAL / FAIL with counts; finish the job, alerting once per episode unless SUCCESS."""
    res, rec = ctx.res, ctx.rec
    customers = Collected.read(rec).customers
    outcome, failed = outcome_of(customers)
    ctx.commit_check()
    uri = write_flag(res, outcome, rec)
    ctx.done(Flagged(flag=outcome, flag_uri=uri).as_outputs())
    if outcome == "SUCCESS":
        rec = finish_job(ctx)
        return {"job_id": ctx.job_id, "state": rec["state"], "flag": outcome}
    details = []
    for c in failed:
        v = customers[c]
        details.append(f"{c} ({v.get('error') or str(v.get('failed')) + ' file(s) failed' + first_file_error(res, ctx.job_id, c)})")
    error = f"{outcome}: {len(failed)} of {len(customers)} customer(s) had failures: {', '.join(details)}"
    rec = finish_unsuccessful(ctx, outcome, error)
    return {"job_id": ctx.job_id, "state": rec["state"], "flag": outcome, "error": error}


def finish_unsuccessful(ctx: PhaseContext, outcome: str, error: str) -> dict:
    """End a PARTIAL or FAIL run: alert once per episode, then one fenced write that fails the job and frees the lock."""
    res = ctx.res
    if ctx.renewer:
        ctx.renewer.stop()
        ctx.renewer = None

    def change(rec):
        phase_entry(rec, ctx.name).update(state="success", finished=now())
        rec.update(state="failed", error=error, finished=now())
    rec = end_unsuccessfully(res, ctx.rec, change, error, status=outcome, fence=ctx.held, release=ctx.held)
    log.error("job %s ended %s: %s", ctx.job_id, outcome, error)
    return rec


# -- plan ------------------------------------------------------------------------

def destination_reachable(res: Resources, url: str) -> dict:
    """Whether a copy destination answers now: connected and its folder looked up (not created)."""
    try:
        backend, base = open_location(res.settings, url)
        with backend:
            found = backend.stat(base)
            return {"uri": backend.uri(base), "reachable": True, "exists": found is not None}
    except BackupError as e:
        return {"uri": redact_url_secrets(url), "reachable": False, "error": e.one_line()}


def plan(res: Resources) -> dict:
    """What a run would do now, touching nothing (``backupctl plan customer-files``).

    The files come from ``discover``, the function the discover phase runs: per customer the
    files it would copy (path, domain, bytes), and how many are settling, deferred past
    ``max_files_per_run``, already in the ledger (``unchanged``) or match no domain; and
    whether its destinations answer.  Reads the sources, the ledger and the destinations;
    writes nothing (no plan in Redis, no folder created).
    """
    from backup.retention import preview

    cfg = config(res)
    files, per_customer, later, skipped, _ = discover(res, cfg)
    holder = res.locks.holder(WORKFLOW, TARGET)
    customers = {}
    for customer, where in cfg.customers.items():
        chosen = [f for f in files[customer] if "refused" not in f]
        customers[customer] = {
            **per_customer[customer], "in_ledger": per_customer[customer]["unchanged"],
            "bytes": sum(f["size"] for f in chosen),
            "files": [{"path": f["path"], "domain": f["domain"], "bytes": f["size"]} for f in chosen],
            "deferred_files": [f["path"] for f in later[customer]],
            "refused_files": [{"path": f["path"], "reason": f["refused"]} for f in files[customer] if "refused" in f],
            "skipped_entries": [e for e in skipped if e["customer"] == customer],
            "destinations": {role: destination_reachable(res, getattr(where, role)) for role in where.roles()},
        }
    totals = {k: sum(c[k] for c in customers.values()) for k in (*COUNTS, "bytes")}
    return {"workflow": WORKFLOW, "target": TARGET, "customers": customers, "totals": totals,
            "max_files_per_run": cfg.max_files_per_run, "settle_seconds": cfg.settle_seconds,
            "lock": {"free": holder is None, "holder": holder}, "retention": preview(res, WORKFLOW, TARGET)}


def validate_request(res: Resources) -> None:
    """A run takes no arguments; it needs the customer_files section (ConfigError before anything is enqueued)."""
    config(res)


DEFINITION = Workflow(
    name=WORKFLOW,
    summary="every configured customer's files copied, verified, to two locations; counts into Hive; a status flag",
    phases=(Phase("lock", lock_phase), Phase("discover", discover_phase),
            Phase("copy", None, queue="io", fan_out=True),  # one task per customer: tasks/customer_files.py
            Phase("collect", collect_phase), Phase("flag", flag_phase)),
    submit=submit,
    validate=validate_request,
    failure_cleanup=write_fail_flag,
    plan=plan,
    target_argument=None,
    target_help="every configured customer",
    fixed_target=TARGET,
)
