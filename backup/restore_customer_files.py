"""The ``restore-customer-files`` workflow: a customer's backed-up files → a folder, from verified copies.

    backupctl restore customer-files CUSTOMER [--domain D] [--file GLOB] [--since YYYY-MM-DD] --to LOCATION

Phases (one Celery task each, chained): lock → plan → verify [io] → restore [io] → finish.

lock     the customer-files backup's own lock, (customer-files, all): a restore never runs beside a backup,
         which could be writing the very copies it reads.
plan     what to restore comes from what the backups recorded: every manifest CSV in
         ``customer_files.manifest_dir`` and the customer's rows of the count table
         ``customer_files.final_table`` (status copied or present).  Per (domain, file) the newest record
         (``copied_at``) matching the filters wins.  The table is read so that a restore still works on a
         worker whose manifests are gone; if it cannot be read, the manifests alone decide (said in outputs).
verify   every chosen file's primary copy is read in full and its SHA-256 compared with the record; a
         missing primary, or one of another size or hash, sends that file to the secondary, checked the
         same way.  The target is checked too: an identical file already there is "present", a different
         one a conflict.  Any file with no good copy, or with a conflict at the target, fails the job here,
         **before anything is written**: a restore is all or nothing (narrow it with --file / --domain to
         get the other files).  A copy that could not be reached (ConnectionFailed) while no other copy of
         the file verified fails the phase retryably instead: a network blip must not read as damage.
restore  the copy engine (``backup.copy_engine``) copies each file from the copy verify chose to
         ``<LOCATION>/<domain>/<file>``: temp name, then rename, never over an existing file, verified at
         the target (SHA-256 read back, or HDFS's file checksum).  The source is read through a filter
         that refuses, at its end, bytes whose SHA-256 is not the recorded one, so a copy damaged between
         verify and restore is never published (the file fails, the others are restored).
finish   success recorded, lock released.

Costs: every source byte is read twice (verify, then restore, each checked against the record) and
every written byte once more at the target (the engine's check); verify batches the checksums of a
location (one remote ``sha256sum`` per batch on SFTP).  The job record's outputs hold one entry per
file: fine for a customer's files of a period, large for tens of thousands (narrow with the filters).

Outputs: ``files`` (per file: domain, file, status restored / present, source primary / secondary,
source_uri, target_uri, bytes, sha256, and ``rejected`` naming any copy found bad and why),
``totals`` and ``location``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fnmatch
import hashlib
import logging
import os
import posixpath
import re
import threading
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from base.errors import (AlreadyExists, BackupError, ChecksumMismatch, ConfigError, ConnectionFailed, FatalError,
                         InvalidInput, NotFound)
from base.identifiers import TableName
from base.text import CONTROL_CHARS
from base.urls import url_scheme
from backup.copy_engine import Destination, batches, copy_files
from backup.customer_files import LOADED_STATUSES, MANIFEST_COLUMNS, csv_value
from backup.customer_files.workflow import TARGET as BACKUP_TARGET, WORKFLOW as BACKUP_WORKFLOW, config
from backup.enqueue import fail_request
from backup.outputs import PhaseOutputs
from backup.resources import Resources
from backup.runner import PhaseContext, finish_job, take_lock
from backup.workflow import Option, Phase, Workflow
from backup.window import parse_date
from config.settings import CustomerFilesSettings, Settings, _glob_problem, _location_problem
from connectors.hive import sql_value
from storage import StorageBackend
from storage.base import is_temp_name
from storage.locations import open_location

log = logging.getLogger(__name__)

WORKFLOW = "restore-customer-files"
TARGET_ROLE = "target"  # the copy engine's name for the restore location (its results' ``target_uri``)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_NAMED = 5  # files named in one error line; the outputs name them all


# -- the request -----------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """A validated request: whose files, where to, and the filters (None: no filter)."""

    customer: str
    location: str
    domain: str | None = None
    file: str | None = None
    since: str | None = None

    def matches(self, row: dict) -> bool:
        """Whether a recorded copy passes the filters (``copied_at`` is a UTC ``...Z`` stamp)."""
        return ((self.domain is None or row["domain"] == self.domain)
                and (self.file is None or fnmatch.fnmatchcase(row["file"], self.file))
                and (self.since is None or row["copied_at"][:10] >= self.since))


def _plain_path(settings: Settings, url: str) -> str | None:
    """A local location as an absolute path without trailing slash (None for a remote URL)."""
    scheme = url_scheme(url)
    if scheme != "file":
        return None
    if url[:5].lower() == "file:":
        url = unquote(urlsplit(url).path)
    return os.path.normpath(str(settings.path(url)))


def _inside(settings: Settings, location: str, folder: str) -> bool:
    """Whether ``location`` is ``folder`` or below it (same spelling of the server for URLs)."""
    a, b = _plain_path(settings, location), _plain_path(settings, folder)
    if a is None or b is None:
        a, b = location.rstrip("/"), folder.rstrip("/")
    return a == b or a.startswith(b.rstrip("/") + "/")


def validate_request(res: Resources, customer: str, location: str | None = None, domain: str | None = None,
                     file: str | None = None, since: str | None = None) -> Request:
    """Check a request without touching any storage; InvalidInput naming the problem (ConfigError without a
    customer_files section)."""
    cfg = config(res)
    if not isinstance(customer, str) or customer not in cfg.customers:
        raise InvalidInput(f"unknown customer {str(customer)[:80]!r} (configured: {', '.join(cfg.customers)})")
    if location is None or location == "":
        raise InvalidInput("a restore needs a target location: --to LOCATION (an absolute path, file://, hdfs://, "
                           "webhdfs:// or sftp://)")
    if not isinstance(location, str):
        raise InvalidInput(f"target location must be a string, got {type(location).__name__}")
    problem = _location_problem(location)
    if problem:
        raise InvalidInput(f"target location {location[:200]!r} {problem}")
    if "://" not in location and not location.startswith("/") and location[:5].lower() != "file:":
        raise InvalidInput(f"target location {location[:200]!r} is a relative path: give an absolute path or a URL "
                           f"(a relative one would resolve on the worker)")
    where = cfg.customers[customer]
    for role in where.roles():
        if _inside(res.settings, location, getattr(where, role)):
            raise InvalidInput(f"target location {location[:200]!r} is inside {customer}'s {role} backup folder "
                               f"{getattr(where, role)}; restore somewhere else")
    if domain is not None and (not isinstance(domain, str) or domain not in cfg.domains):
        raise InvalidInput(f"unknown domain {str(domain)[:80]!r} (configured: {', '.join(cfg.domains)})")
    if file is not None:
        problem = _glob_problem(file) if isinstance(file, str) else "is not a string"
        if problem:
            raise InvalidInput(f"file glob {str(file)[:200]!r} {problem}")
    if since is not None:
        if not isinstance(since, str) or not _DATE.fullmatch(since):
            raise InvalidInput(f"since {str(since)[:40]!r}: use a date YYYY-MM-DD")
        try:
            dt.date.fromisoformat(since)
        except ValueError:
            raise InvalidInput(f"since {since!r} is not a calendar date") from None
        parse_date(since, "since date")  # and within the dates any request may name
    return Request(customer, location, domain, file, since)


def submit(res: Resources, customer: str, location: str | None, domain: str | None = None, file: str | None = None,
           since: str | None = None, job_id: str | None = None) -> dict:
    """Validate and create the job record (target: the customer); a bad request is recorded failed, starts nothing."""
    job_id = job_id or uuid.uuid4().hex
    args = {"customer": customer, "location": location, "domain": domain, "file": file, "since": since}
    try:
        validate_request(res, customer, location, domain, file, since)
    except (InvalidInput, ConfigError) as e:
        target = CONTROL_CHARS.sub("?", str(customer))[:100] or "-"
        res.jobs.create(job_id, WORKFLOW, target, args, DEFINITION.phase_names)
        return fail_request(res, job_id, e)
    return res.jobs.create(job_id, WORKFLOW, customer, args, DEFINITION.phase_names)


def _request(rec: dict) -> Request:
    a = rec["args"]
    return Request(a["customer"], a["location"], a.get("domain"), a.get("file"), a.get("since"))


# -- outputs handed on through the job record -----------------------------------

@dataclass(frozen=True)
class Planned(PhaseOutputs):
    """plan → verify, restore: the files to restore, each as recorded (domain, file, bytes, sha256,
    primary_uri, secondary_uri, copied_at, recorded_in), sorted by domain and file; and ``records``:
    what was read to choose them (manifests, count-table rows, and what could not be read)."""

    written_by: ClassVar[str] = "plan"
    files: list
    records: dict


@dataclass(frozen=True)
class Verified(PhaseOutputs):
    """verify → restore: per planned file (same order) the copy to read (``source``: primary or secondary,
    ``source_uri``), ``present`` (an identical file is already at the target) and ``rejected`` (role →
    why that copy is not used)."""

    written_by: ClassVar[str] = "verify"
    sources: list


@dataclass(frozen=True)
class Restored(PhaseOutputs):
    """restore → finish and the reader: per file what was restored from where, the totals, the location."""

    written_by: ClassVar[str] = "restore"
    files: list
    totals: dict
    location: str


# -- lock ------------------------------------------------------------------------

def lock_phase(ctx: PhaseContext) -> dict:
    """Take the customer-files backup's lock (customer-files, all) or end the job as skipped, naming the holder."""
    return take_lock(ctx, BACKUP_WORKFLOW, BACKUP_TARGET)


# -- plan ------------------------------------------------------------------------

def _record(row: dict, recorded_in: str) -> dict | None:
    """A manifest or table row as a restorable record, or None if it is not one (wrong status, damaged)."""
    if row.get("status") not in LOADED_STATUSES:
        return None
    try:
        size = int(row["bytes"])
    except (TypeError, ValueError):
        return None
    name, domain, digest = str(row.get("file") or ""), str(row.get("domain") or ""), str(row.get("sha256") or "")
    for part in (name, domain):
        # A record never names what is read or written outside <location>/<domain>/<file>.
        if not part or part in (".", "..") or "/" in part or CONTROL_CHARS.search(part) or is_temp_name(part):
            return None
    if size < 0 or not _SHA256.fullmatch(digest):
        return None
    return {"domain": domain, "file": name, "bytes": size, "sha256": digest,
            "primary_uri": row.get("primary_uri") or None, "secondary_uri": row.get("secondary_uri") or None,
            "copied_at": str(row.get("copied_at") or ""), "recorded_in": recorded_in}


def read_manifests(res: Resources, cfg: CustomerFilesSettings, customer: str) -> tuple[list[dict], dict]:
    """The customer's restorable rows of every manifest, oldest manifest first; and what was read."""
    folder = res.settings.path(cfg.manifest_dir)
    rows: list[dict] = []
    info = {"manifest_dir": str(folder), "manifests": 0, "manifest_rows": 0, "unreadable": []}
    if not folder.is_dir():
        return rows, info
    # Manifest names start with the run's UTC time: name order is run order.  Temp names start with a dot.
    for path in sorted(p for p in folder.glob("*.csv") if not p.name.startswith(".")):
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or [])
                if missing:
                    info["unreadable"].append(f"{path.name}: columns {sorted(missing)} missing")
                    continue
                rows_read = ({k: csv_value(v) if isinstance(v, str) else v for k, v in r.items()} for r in reader)
                found = [r for r in rows_read if r["customer"] == customer]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            info["unreadable"].append(f"{path.name}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            continue
        info["manifests"] += 1
        for row in found:
            record = _record(row, f"manifest {path.name}")
            if record:
                rows.append(record)
                info["manifest_rows"] += 1
    return rows, info


def read_count_table(res: Resources, cfg: CustomerFilesSettings, customer: str) -> tuple[list[dict], str | None]:
    """The customer's restorable rows of the count table, and why it could not be read (None if it was)."""
    table = TableName.parse(cfg.final_table)
    statuses = ", ".join(sql_value(s) for s in LOADED_STATUSES)
    sql = (f"SELECT `domain`, `file_name`, `bytes`, `sha256`, `primary_uri`, `secondary_uri`, `copied_at`, `status`, "
           f"`job_id` FROM {table.sql} WHERE `customer` = {sql_value(customer)} AND `status` IN ({statuses})")
    try:
        with res.hive() as hive:
            found = hive.query(sql, f"read {table}")
    except BackupError as e:  # the manifests may be enough; the outputs say the table was not read
        return [], e.one_line()
    rows = []
    for domain, name, size, digest, primary, secondary, copied_at, status, job_id in found:
        record = _record({"domain": domain, "file": name, "bytes": size, "sha256": digest, "primary_uri": primary,
                          "secondary_uri": secondary, "copied_at": copied_at, "status": status},
                         f"table {table} job {job_id}")
        if record:
            rows.append(record)
    return rows, None


def choose(records: list[dict], req: Request) -> list[dict]:
    """Per (domain, file) the newest matching record; on equal ``copied_at`` a manifest's before the table's,
    a later manifest's before an earlier one's (``records`` comes manifests first, in run order)."""
    best: dict[tuple[str, str], tuple[tuple, dict]] = {}
    for order, row in enumerate(records):
        if not req.matches(row):
            continue
        rank = (row["copied_at"], row["recorded_in"].startswith("manifest "), order)
        key = (row["domain"], row["file"])
        if key not in best or rank > best[key][0]:
            best[key] = (rank, row)
    return [best[key][1] for key in sorted(best)]


def plan_phase(ctx: PhaseContext) -> dict:
    """Choose the files: the newest recorded copy of each file matching the filters (manifests and count table)."""
    res, req = ctx.res, _request(ctx.rec)
    cfg = config(res)
    manifest_rows, info = read_manifests(res, cfg, req.customer)
    table_rows, table_error = read_count_table(res, cfg, req.customer)
    info.update(table=cfg.final_table, table_rows=len(table_rows), table_error=table_error)
    files = choose(manifest_rows + table_rows, req)
    if not files:
        filters = ", ".join(f"{k} {v!r}" for k, v in (("domain", req.domain), ("file", req.file),
                                                         ("since", req.since)) if v) or "no filter"
        read = f"{info['manifests']} manifest(s) in {info['manifest_dir']}, " + (
            f"count table {cfg.final_table}" if table_error is None else f"count table not read ({table_error})")
        raise NotFound(f"no backed-up file of customer {req.customer} matches ({filters}); read {read}")
    total = sum(f["bytes"] for f in files)
    ctx.done(Planned(files=files, records=info).as_outputs(), note=f"{len(files)} file(s), {total} bytes to restore")
    return {"job_id": ctx.job_id, "files": len(files), "bytes": total}


# -- verify ----------------------------------------------------------------------

class _Copies:
    """One role's backup copies (the customer's configured primary or secondary location), opened on first use.

    A record names its copy by URI; the copy is read only where the configured location puts it
    (``<location>/<domain>/<file>``, spelled the same): a record never picks what is read.
    """

    def __init__(self, settings: Settings, role: str, url: str, stack: ExitStack):
        self.settings, self.role, self.url, self.stack = settings, role, url, stack
        self.backend: StorageBackend | None = None
        self.base = ""
        self.down: BackupError | None = None

    def open(self) -> bool:
        """Open the location once; False (and ``down`` says why) if it cannot be."""
        if self.backend is None and self.down is None:
            try:
                backend, self.base = open_location(self.settings, self.url)
                self.backend = self.stack.enter_context(backend)
            except BackupError as e:
                self.down = e
        return self.backend is not None

    def path(self, f: dict) -> tuple[str | None, BackupError | None]:
        """Where this role's copy of ``f`` is read, or why there is none to read."""
        recorded = f.get(f"{self.role}_uri")
        if not recorded:
            return None, NotFound(f"no {self.role} copy recorded ({f['recorded_in']})")
        if not self.open():
            return None, self.down
        path = posixpath.join(self.base, f["domain"], f["file"])
        if self.backend.uri(path) != recorded:
            return None, NotFound(f"the {self.role} copy was recorded at {recorded}, not where the configured "
                                  f"{self.role} location {self.url} puts it ({self.backend.uri(path)})")
        return path, None

    def check(self, files: list[dict]) -> list[tuple[str | None, BackupError | None]]:
        """Per file (uri, None) if this role's copy has the recorded size and SHA-256, else (uri, why not)."""
        out: list[tuple[str | None, BackupError | None]] = []
        to_hash: dict[int, str] = {}
        for i, f in enumerate(files):
            path, problem = self.path(f)
            if problem is not None:
                out.append((None, problem))
                continue
            uri = self.backend.uri(path)
            try:
                found = self.backend.stat(path)
            except BackupError as e:
                out.append((uri, e))
                continue
            if found is None or found.is_dir:
                out.append((uri, NotFound(f"{uri} is missing")))
            elif found.size != f["bytes"]:
                out.append((uri, ChecksumMismatch(f"{uri} has {found.size} bytes, the backup recorded {f['bytes']}")))
            else:
                out.append((uri, None))
                to_hash[i] = path
        digests = _sha256_each(self.backend, list(to_hash.values())) if to_hash else {}
        for i, path in to_hash.items():
            got, uri = digests[path], out[i][0]
            if isinstance(got, BackupError):
                out[i] = (uri, got)
            elif got != files[i]["sha256"]:
                out[i] = (uri, ChecksumMismatch(f"{uri} has sha256 {got[:12]}…, the backup recorded "
                                                f"{files[i]['sha256'][:12]}…"))
        return out


def _sha256_each(backend: StorageBackend, paths: list[str]) -> dict[str, str | BackupError]:
    """SHA-256 of each path in one batch; after a failed batch one by one, so each failure names its file."""
    try:
        return dict(backend.sha256_many(paths))
    except ConnectionFailed as e:
        return {path: e for path in paths}
    except BackupError:
        out: dict[str, str | BackupError] = {}
        for path in paths:
            try:
                out[path] = backend.sha256(path)
            except BackupError as e:
                out[path] = e
        return out


def _target_conflicts(backend: StorageBackend, base: str, files: list[dict]) -> list[str | None]:
    """Per file: None (nothing at the target), "present" (the recorded file, verified) or why it conflicts.

    A failure to look at the target raises: the target must be usable before anything is decided.
    """
    out: list[str | None] = []
    to_hash: dict[int, str] = {}
    for i, f in enumerate(files):
        path = posixpath.join(base, f["domain"], f["file"])
        found = backend.stat(path)
        if found is None:
            out.append(None)
        elif found.is_dir or found.size != f["bytes"]:
            what = "a folder" if found.is_dir else f"{found.size} bytes instead of {f['bytes']}"
            out.append(AlreadyExists(f"a different file is already at {backend.uri(path)} ({what}); "
                                     f"not overwritten").one_line())
        else:
            out.append("present")
            to_hash[i] = path
    digests = backend.sha256_many(list(to_hash.values())) if to_hash else {}
    for i, path in to_hash.items():
        if digests[path] != files[i]["sha256"]:
            out[i] = AlreadyExists(f"a different file is already at {backend.uri(path)} (sha256 "
                                   f"{digests[path][:12]}…); not overwritten").one_line()
    return out


def _keep_outputs(ctx: PhaseContext, outputs: dict) -> None:
    """Put per-file findings in the record before the phase fails (fenced), so the record names every file."""
    def change(rec):
        rec["outputs"].update(outputs)
    ctx.rec = ctx.res.jobs.update(ctx.job_id, change, fence=ctx.held)


def _named(failures: list[str]) -> str:
    shown = "; ".join(failures[:MAX_NAMED])
    return shown + (f"; and {len(failures) - MAX_NAMED} more (see outputs.files)" if len(failures) > MAX_NAMED else "")


def verify_phase(ctx: PhaseContext) -> dict:
    """Choose each file's copy (the primary if it verifies, else the secondary) and check the target; fail before
    writing anything if a file has no good copy or a different file sits at its target."""
    res, req = ctx.res, _request(ctx.rec)
    files = Planned.read(ctx.rec).files
    where = config(res).customers[req.customer]
    verdicts = [{"domain": f["domain"], "file": f["file"], "source": None, "source_uri": None, "present": False,
                 "rejected": {}} for f in files]
    transient: set[int] = set()
    with ExitStack() as stack:
        left = list(range(len(files)))
        for role in where.roles():
            if not left:
                break
            copies = _Copies(res.settings, role, getattr(where, role), stack)
            for i, (uri, problem) in zip(left, copies.check([files[i] for i in left])):
                if problem is None:
                    verdicts[i].update(source=role, source_uri=uri)
                else:
                    verdicts[i]["rejected"][role] = problem.one_line()
                    if isinstance(problem, ConnectionFailed):
                        transient.add(i)
            left = [i for i in left if verdicts[i]["source"] is None]
            ctx.progress(force=True, files_verified=len(files) - len(left), files_total=len(files))
        backend, base = open_location(res.settings, req.location)
        with backend:
            conflicts = _target_conflicts(backend, base, files)
    failures, waiting = [], []
    for i, (v, conflict) in enumerate(zip(verdicts, conflicts)):
        v["present"] = conflict == "present"
        name = f"{v['domain']}/{v['file']}"
        if v["source"] is None:
            why = "; ".join(f"{role}: {text}" for role, text in v["rejected"].items())
            (waiting if i in transient else failures).append(f"{name}: no good backup copy ({why})")
            v["error"] = f"no good backup copy ({why})"
        if conflict not in (None, "present"):
            failures.append(f"{name}: {conflict}")
            v["error"] = conflict
    if waiting and not failures:
        # An unreachable copy may be a good one: retried within the budget, as any connection failure.  The
        # findings go beside the plan, never over it: the retry reads the plan's ``files``.
        _keep_outputs(ctx, {"last_attempt": {"phase": ctx.name, "files": verdicts}})
        raise ConnectionFailed(f"{len(waiting)} file(s) could not be verified: {_named(waiting)}")
    if failures or waiting:
        _keep_outputs(ctx, {"files": verdicts})
        bad = failures + waiting
        raise FatalError(f"restore of {req.customer}: {len(bad)} of {len(files)} file(s) cannot be restored, nothing "
                         f"was written (narrow the restore with --file or --domain to get the others): {_named(bad)}")
    from_secondary = sum(v["source"] == "secondary" for v in verdicts)
    present = sum(v["present"] for v in verdicts)
    ctx.done({**Verified(sources=verdicts).as_outputs(), "last_attempt": None},
             note=f"{len(files)} file(s) verified: {len(files) - from_secondary} from the primary, {from_secondary} "
                  f"from the secondary; {present} already at the target")
    return {"job_id": ctx.job_id, "files": len(files), "from_secondary": from_secondary, "present": present}


# -- restore ---------------------------------------------------------------------

class _CheckedStream:
    """A copy being read that must hash to the recorded SHA-256: at its end a different hash raises, so the copy
    engine discards what it wrote from it (the target's temp file) and never publishes it."""

    def __init__(self, raw, expected: str, uri: str):
        self._raw, self._expected, self._uri = raw, expected, uri
        self._digest = hashlib.sha256()
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self._digest.update(data)
        elif not self._ended:
            self._ended = True
            got = self._digest.hexdigest()
            if got != self._expected:
                # Not retried: the copy itself differs (verify saw it good: it changed since).
                raise FatalError(f"{self._uri} changed since it was verified: sha256 {got[:12]}…, the backup "
                                 f"recorded {self._expected[:12]}…")
        return data


class _RecordedSource:
    """The source the copy engine reads: a role's backend whose reads are checked against the records.

    The engine reports a file's failure as text; ``unreachable`` keeps the paths whose read failed with
    ConnectionFailed, so the phase retries those instead of calling them damaged.
    """

    def __init__(self, backend: StorageBackend, expected: dict[str, str]):
        self.backend, self.expected = backend, expected
        self.unreachable: set[str] = set()

    @property
    def scheme(self) -> str:
        """The role's storage scheme (the engine reads a non-local source with several files in flight)."""
        return self.backend.scheme

    def uri(self, path: str) -> str:
        return self.backend.uri(path)

    def stat(self, path: str):
        try:
            return self.backend.stat(path)
        except ConnectionFailed:
            self.unreachable.add(path)
            raise

    @contextlib.contextmanager
    def open_read(self, path: str, offset: int = 0):
        try:
            with self.backend.open_read(path, offset) as stream:
                yield _CheckedStream(stream, self.expected[path], self.backend.uri(path))
        except ConnectionFailed:
            self.unreachable.add(path)
            raise


def restore_phase(ctx: PhaseContext) -> dict:
    """Copy each file from its verified copy to ``<LOCATION>/<domain>/<file>`` with the copy engine (atomic,
    never over an existing file, verified at the target); the files that fail are named, the others restored."""
    res, req = ctx.res, _request(ctx.rec)
    files, verdicts = Planned.read(ctx.rec).files, Verified.read(ctx.rec).sources
    where = config(res).customers[req.customer]
    results: list[dict] = []
    for f, v in zip(files, verdicts):
        results.append({"domain": f["domain"], "file": f["file"], "status": "failed", "source": v["source"],
                        "source_uri": v["source_uri"], "target_uri": None, "bytes": f["bytes"], "sha256": f["sha256"],
                        "copied_at": f["copied_at"], "recorded_in": f["recorded_in"], "rejected": v["rejected"],
                        "error": None})
    transient: list[str] = []  # files that failed on a connection: the phase is retried for them
    progress = {"files_done": 0, "files_total": len(files), "bytes": 0, "total_bytes": sum(f["bytes"] for f in files)}
    counting = threading.Lock()

    def on_bytes(n: int) -> None:  # called by the engine's transfer threads
        with counting:
            progress["bytes"] += n
            snapshot = dict(progress)
        ctx.progress(**snapshot)

    with ExitStack() as stack:
        backend, base = open_location(res.settings, req.location)  # a failure here is the phase's (retried)
        target = Destination(TARGET_ROLE, req.location, backend=stack.enter_context(backend), base=base)
        for role in where.roles():
            mine = [i for i, v in enumerate(verdicts) if v["source"] == role]
            if not mine:
                continue
            copies = _Copies(res.settings, role, getattr(where, role), stack)
            items = []
            for i in mine:
                path, problem = copies.path(files[i])
                found = None
                if problem is None:
                    try:
                        found = copies.backend.stat(path)
                    except BackupError as e:
                        problem = e
                if problem is None and found is None:
                    problem = NotFound(f"{copies.backend.uri(path)} vanished since it was verified")
                if problem is not None:
                    results[i]["error"] = problem.one_line()
                    if isinstance(problem, ConnectionFailed):
                        transient.append(f"{files[i]['domain']}/{files[i]['file']}")
                    continue
                items.append({"path": path, "size": found.size, "mtime": found.mtime, "domain": files[i]["domain"],
                              "index": i})
            source = _RecordedSource(copies.backend, {it["path"]: files[it["index"]]["sha256"] for it in items})
            for batch in batches(items):
                ctx.commit_check()  # stop at once if the lock was lost (a backup may run now)
                for item, copied in zip(batch, copy_files(batch, lambda _: source, [target], on_bytes)):
                    r = results[item["index"]]
                    r.update(target_uri=copied.get("target_uri"), verified_by=copied.get("verified_by"))
                    if copied["status"] == "failed":
                        r["error"] = copied["error"]
                        if item["path"] in source.unreachable:
                            transient.append(f"{r['domain']}/{r['file']}")
                    elif copied["sha256"] != r["sha256"]:  # the engine checked the target against what it read
                        r["error"] = f"read sha256 {copied['sha256']} is not the recorded one"
                    else:
                        r["status"] = "restored" if copied["status"] == "copied" else "present"
                    progress["files_done"] += 1
                ctx.progress(**progress)
        if target.down:  # the target became unreachable: retried; files already there are found present
            _keep_outputs(ctx, {"last_attempt": {"phase": ctx.name, "files": results}})
            raise ConnectionFailed(f"target {req.location}: {target.down}")
    totals = {"files": len(results), "restored": sum(r["status"] == "restored" for r in results),
              "present": sum(r["status"] == "present" for r in results),
              "failed": sum(r["status"] == "failed" for r in results),
              "bytes": sum(r["bytes"] for r in results if r["status"] != "failed"),
              "from_primary": sum(r["source"] == "primary" and r["status"] != "failed" for r in results),
              "from_secondary": sum(r["source"] == "secondary" and r["status"] != "failed" for r in results)}
    failed = [f"{r['domain']}/{r['file']}: {r['error']}" for r in results if r["status"] == "failed"]
    if failed and len(transient) == len(failed):
        # Every failure was a connection: retried within the budget; files already restored are found present.
        # The findings go beside the plan, never over it: the retry reads the plan's ``files``.
        _keep_outputs(ctx, {"last_attempt": {"phase": ctx.name, "files": results}})
        raise ConnectionFailed(f"{len(failed)} file(s) could not be read from their backup copy: {_named(failed)}")
    if failed:
        _keep_outputs(ctx, Restored(files=results, totals=totals, location=req.location).as_outputs())
        raise FatalError(f"restore of {req.customer}: {len(failed)} of {len(results)} file(s) failed, "
                         f"{totals['restored'] + totals['present']} restored to {req.location}: {_named(failed)}")
    ctx.done({**Restored(files=results, totals=totals, location=req.location).as_outputs(), "last_attempt": None},
             note=f"{totals['restored']} restored, {totals['present']} already present, "
                  f"{totals['from_secondary']} from the secondary")
    return {"job_id": ctx.job_id, **totals}


# -- finish ----------------------------------------------------------------------

def finish_phase(ctx: PhaseContext) -> dict:
    """Record success and release the lock."""
    rec = finish_job(ctx)
    restored = Restored.find(rec)
    return {"job_id": ctx.job_id, "state": rec["state"], "totals": restored.totals if restored else None}


DEFINITION = Workflow(
    name=WORKFLOW,
    summary="a customer's backed-up files restored into a folder, each from a copy verified against its record",
    phases=(Phase("lock", lock_phase), Phase("plan", plan_phase), Phase("verify", verify_phase, queue="io"),
            Phase("restore", restore_phase, queue="io"), Phase("finish", finish_phase)),
    submit=submit,
    validate=validate_request,
    target_argument="customer",
    target_help="CUSTOMER",
    options=(Option("--to", "location", "where the files go: an absolute path, file://, hdfs://, webhdfs:// or "
                                        "sftp://; they land under LOCATION/<domain>/<file>"),
             Option("--domain", "domain", "only this domain's files"),
             Option("--file", "file", "only files whose name matches this glob (fnmatch, case-sensitive)"),
             Option("--since", "since", "only copies made on or after this UTC date, YYYY-MM-DD")),
    verb="restore",
    cli_name="customer-files",
)
