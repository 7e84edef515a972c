"""The ``customer-files`` workflow: every customer's new files → two verified backups → Hive count table.

Phases (Celery tasks): lock → discover → one ``copy:<customer>`` per customer
(a group, in parallel on the ``io`` queue) → collect (the chord's body) → flag.
The phase functions take a ``PhaseContext`` and return small JSON; none needs
a worker.

Layout: a customer's files are read from ``<source dir>/<customer>/`` and
copied to ``<primary>/<domain>/<file>`` and ``<secondary>/<domain>/<file>``.

Redis keys, besides the job record (``<p>`` is ``redis.key_prefix``):
  <p>:customer_files:plan:<job>            customer -> files chosen by discover
  <p>:customer_files:results:<job>:<cust>  "<source index>\0<path>" -> per-file result (a
                                           redelivered copy task resumes from here)
  <p>:customer_files:errors:<job>          customer -> error that ended its copy task
  <p>:customer_files:ledger:<cust>         "<path>\\0<size>\\0<mtime>" -> sha256, records, job
The ledger only saves work: a file missing from it is copied again, and a
destination already holding the identical file is verified, not rewritten.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

from base.urls import url_scheme
from base.text import CONTROL_CHARS, run_id, utc_z
from base.errors import (AlreadyExists, BackupError, ChecksumMismatch, ConfigError, ConnectionFailed,
                           FatalError, LockLost, NotFound, classify)
from base.identifiers import TableName
from backup.jobs import now, phase_entry
from backup.enqueue import fail_request
from backup.resources import Resources
from backup.workflow import Phase, Workflow
from backup.runner import PhaseContext, end_unsuccessfully, finish_job, take_lock
from config.settings import CustomerFilesSettings, Settings
from storage import StorageBackend, open_backend
from storage.base import FileStat, is_temp_name, iter_chunks
from storage.hdfs_checksum import ChecksumSpec, HdfsChecksummer, matches

log = logging.getLogger(__name__)

WORKFLOW = "customer-files"
TARGET = "all"  # one run covers every configured customer: one lock for all

MANIFEST_COLUMNS = ["customer", "domain", "file", "bytes", "records", "sha256", "primary_uri", "secondary_uri",
                    "copied_at", "status", "error"]
# The staging and final tables: the manifest's columns plus the job id.
TABLE_COLUMNS = [("customer", "STRING"), ("domain", "STRING"), ("file_name", "STRING"), ("bytes", "BIGINT"),
                 ("records", "BIGINT"), ("sha256", "STRING"), ("primary_uri", "STRING"), ("secondary_uri", "STRING"),
                 ("copied_at", "STRING"), ("status", "STRING"), ("error", "STRING"), ("job_id", "STRING")]
LOADED_STATUSES = ("copied", "present")  # rows merged into the final table
ROWS_PER_INSERT = 5000  # one INSERT OVERWRITE for a usual run; bounded statement size
FEED_QUEUE_CHUNKS = 8  # chunks buffered per destination: the slower destination paces the read
TRANSFER_THREADS = 4  # files of one customer in flight at once
DESTINATIONS = ("primary", "secondary")


# -- configuration and locations -------------------------------------------------

def config(res: Resources) -> CustomerFilesSettings:
    """The customer_files section; ConfigError if the config has none."""
    cfg = res.settings.customer_files
    if cfg is None:
        raise ConfigError("customer_files: section missing from the config; the customer-files workflow is not set up")
    return cfg


def copy_phase(customer: str) -> str:
    """Phase name of one customer's copy task in the job record."""
    return f"copy:{customer}"


def phase_names(cfg: CustomerFilesSettings) -> list[str]:
    """Every phase of a run, in order."""
    return ["lock", "discover", *(copy_phase(c) for c in cfg.customers), "collect", "flag"]


def storage_options(settings: Settings, url: str) -> dict:
    """``open_backend`` options for a location: SFTP gets the configured key, known_hosts and timeout,
    HDFS Kerberos if configured."""
    scheme = url_scheme(url)
    if scheme in ("hdfs", "webhdfs"):
        cfg = settings.customer_files
        return {"kerberos": True} if cfg is not None and cfg.hdfs_kerberos else {}
    if scheme != "sftp":
        return {}
    passphrase = settings.secret("BACKUP_SFTP_KEY_PASSPHRASE")
    return {"key_file": str(settings.path(settings.sftp.key_file)),
            "known_hosts": str(settings.path(settings.sftp.known_hosts)),
            "connect_timeout": settings.sftp.connect_timeout,
            "passphrase": passphrase.get_secret_value() if passphrase else None}


def open_location(settings: Settings, url: str) -> tuple[StorageBackend, str]:
    """Open a configured location; a relative plain path resolves against ``base_dir``."""
    if "://" not in url and not url.lower().startswith("file:"):
        url = str(settings.path(url))
    return open_backend(url, **storage_options(settings, url))


def domain_of(cfg: CustomerFilesSettings, name: str) -> str | None:
    """The first domain whose patterns match the file name ``name``."""
    for domain, patterns in cfg.domains.items():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return domain
    return None


def count_records(data: bytes) -> int:
    """Lines in ``data`` the way the backup counts them (see ``RecordCounter``)."""
    counter = RecordCounter()
    counter.update(data)
    return counter.records


class RecordCounter:
    """Counts records fed chunk by chunk: newline-terminated lines, plus an unterminated last line.

    CRLF ends a line once (its LF is counted); an empty input has 0 records.
    """

    def __init__(self) -> None:
        self.newlines = 0
        self.size = 0
        self._last = b""

    def update(self, chunk: bytes) -> None:
        """Count one chunk."""
        if chunk:
            self.newlines += chunk.count(b"\n")
            self.size += len(chunk)
            self._last = chunk[-1:]

    @property
    def records(self) -> int:
        """Records seen so far."""
        return self.newlines + (1 if self.size and self._last != b"\n" else 0)


# -- Redis bookkeeping -----------------------------------------------------------

def _key(res: Resources, *parts: str) -> str:
    return ":".join([res.settings.redis.key_prefix, "customer_files", *parts])


def _expire(res: Resources) -> int:
    return res.settings.celery.result_expires


def ledger_field(path: str, size: int, mtime: float) -> str:
    """Ledger entry name of a source file in a given state."""
    return f"{path}\0{size}\0{mtime!r}"


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    """Redis errors inside the block become ConnectionFailed (retryable)."""
    try:
        yield
    except redis.RedisError as e:
        raise ConnectionFailed(f"{what}: {e}") from e


def load_plan(res: Resources, job_id: str, customer: str) -> list[dict]:
    """The files discover chose for one customer."""
    with _redis_errors("read plan"):
        raw = res.redis.hget(_key(res, "plan", job_id), customer)
    return json.loads(raw) if raw else []


def load_results(res: Resources, job_id: str, customer: str) -> dict[str, dict]:
    """Per-file results recorded so far for one customer, by plan key."""
    with _redis_errors("read results"):
        raw = res.redis.hgetall(_key(res, "results", job_id, customer))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def _save_result(res: Resources, job_id: str, customer: str, key: str, result: dict) -> None:
    name = _key(res, "results", job_id, customer)
    with _redis_errors("save result"):
        pipe = res.redis.pipeline()
        pipe.hset(name, key, json.dumps(result))
        pipe.expire(name, _expire(res))
        pipe.execute()


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


def plan_key(item: dict) -> str:
    """Identity of a planned file inside a run: source folder index and path."""
    return f"{item['source']}\0{item['path']}"


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

def discover_phase(ctx: PhaseContext) -> dict:
    """Choose the files of this run: matched, settled, not in the ledger, oldest first, capped."""
    res, cfg = ctx.res, config(ctx.res)
    counts = {c: Counter() for c in cfg.customers}
    candidates: list[dict] = []
    horizon = time.time() - cfg.settle_seconds
    with ExitStack() as stack:
        for index, url in enumerate(cfg.source_dirs):
            backend, root = open_location(res.settings, url)
            stack.enter_context(backend)
            if backend.stat(root) is None:
                raise NotFound(f"customer_files.source_dirs[{index}]: {backend.uri(root)} does not exist")
            for customer in cfg.customers:
                folder = posixpath.join(root, customer)
                found = backend.stat(folder)
                if found is None or not found.is_dir:
                    continue  # nothing delivered for this customer here yet
                entries = [e for e in backend.list(folder) if not e.is_dir and not is_temp_name(e.name)]
                fields = [ledger_field(e.path, e.size, e.mtime) for e in entries]
                with _redis_errors("read ledger"):
                    known = res.redis.hmget(_key(res, "ledger", customer), fields) if fields else []
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
    for item in chosen:
        plan[item["customer"]].append(item)
        counts[item["customer"]]["planned"] += 1
    for item in deferred:
        counts[item["customer"]]["deferred"] += 1
    name = _key(res, "plan", ctx.job_id)
    with _redis_errors("save plan"):
        pipe = res.redis.pipeline()
        pipe.delete(name)
        pipe.hset(name, mapping={c: json.dumps(files) for c, files in plan.items()})
        pipe.expire(name, _expire(res))
        pipe.execute()
    per_customer = {c: {k: counts[c][k] for k in ("found", "planned", "unchanged", "settling", "deferred",
                                                  "unmatched")} for c in cfg.customers}
    totals = {k: sum(v[k] for v in per_customer.values()) for k in ("found", "planned", "unchanged", "settling",
                                                                      "deferred", "unmatched")}
    note = (f"{totals['planned']} to copy, {totals['unchanged']} unchanged, {totals['settling']} settling, "
            f"{totals['deferred']} deferred to the next run")
    ctx.done({"customers": per_customer, "discovered": totals}, note=note)
    return {"job_id": ctx.job_id, **totals}


# -- copy ------------------------------------------------------------------------

@dataclass
class Destination:
    """One customer's primary or secondary location during a copy task."""

    role: str
    url: str
    backend: StorageBackend | None = None
    base: str = ""
    down: str | None = None  # why nothing more is attempted here in this task
    ready: set = field(default_factory=set)  # domain folders created and swept
    _preparing: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def open(self, settings: Settings) -> None:
        """Open the backend; a failure marks the destination down (its files fail as data)."""
        try:
            self.backend, self.base = open_location(settings, self.url)
        except BackupError as e:
            self.down = e.one_line()

    def folder(self, domain: str) -> str:
        """The domain folder, created and swept of dead writers' temp files once per task."""
        path = posixpath.join(self.base, domain)
        with self._preparing:  # concurrent transfers wait: none may write here before the sweep
            if domain not in self.ready:
                self.backend.mkdir(path)
                # The run's lock makes every temp file here a leftover of a killed writer.
                self.backend.remove_stale_temps(path)
                self.ready.add(domain)
        return path

    def fail(self, exc: BackupError) -> str:
        """Note an error; a connection failure ends this destination for the task."""
        line = exc.one_line()
        if isinstance(exc, ConnectionFailed):
            self.down = line
        return line


class _Feed:
    """One destination written from the shared read pass through a bounded queue."""

    _END = object()

    def __init__(self, backend: StorageBackend, path: str) -> None:
        self.backend, self.path = backend, path
        self.queue: queue.Queue = queue.Queue(maxsize=FEED_QUEUE_CHUNKS)
        self.outcome: FileStat | BaseException | None = None
        self._ended = False
        self.thread = threading.Thread(target=self._run, name=f"write {path}", daemon=True)
        self.thread.start()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            item = self.queue.get()
            if item is self._END or isinstance(item, BaseException):
                self._ended = True
                if item is self._END:
                    return
                raise item
            yield item

    def _run(self) -> None:
        try:
            self.outcome = self.backend.write_atomic(self.path, self._chunks())
        except BaseException as e:  # handed to the reading thread as this destination's outcome
            self.outcome = e
            while not self._ended:  # keep taking chunks so the reader never blocks on us
                item = self.queue.get()
                self._ended = item is self._END or isinstance(item, BaseException)

    def finish(self) -> None:
        """Tell the writer the source is complete."""
        self.queue.put(self._END)

    def abort(self, why: BaseException) -> None:
        """Tell the writer the source failed: it discards its temp file."""
        self.queue.put(why)


class SourceFailed(Exception):
    """The source could not be read to the end (wrapped so writers abort)."""


def read_once(stream, feeds: list[_Feed], on_bytes: Callable[[int], None],
              checksummers: list[HdfsChecksummer] = ()) -> dict:
    """Read ``stream`` once: hash it, count its records, compute the HDFS file checksums of
    ``checksummers`` and feed every destination; returns the totals."""
    digest = hashlib.sha256()
    counter = RecordCounter()
    try:
        for chunk in iter_chunks(stream):
            digest.update(chunk)
            counter.update(chunk)
            for checksummer in checksummers:
                checksummer.update(chunk)
            for feed in feeds:
                feed.queue.put(chunk)
            on_bytes(len(chunk))
    except BaseException as e:
        for feed in feeds:
            feed.abort(SourceFailed(f"source read failed: {e}"))
        raise
    else:
        for feed in feeds:
            feed.finish()
    finally:
        for feed in feeds:
            feed.thread.join()
    return {"bytes": counter.size, "records": counter.records, "sha256": digest.hexdigest()}


@dataclass
class _Transfer:
    """One file after its read pass, waiting for the destinations' checksums."""

    item: dict
    result: dict
    states: dict[str, str] = field(default_factory=dict)  # role -> copied / present / failed
    errors: list[str] = field(default_factory=list)
    targets: dict[str, str] = field(default_factory=dict)  # role -> path, for destinations still in play
    found: dict[str, FileStat] = field(default_factory=dict)  # role -> the file there (written now or before)
    written: set = field(default_factory=set)  # roles written by this pass
    checksums: dict[str, tuple[ChecksumSpec, dict]] = field(default_factory=dict)  # role -> HDFS file checksums


def _transfer(item: dict, source: StorageBackend, dests: list[Destination],
              on_bytes: Callable[[int], None]) -> _Transfer:
    """Read the source once: count, hash and write it to every destination that does not have it yet."""
    name = posixpath.basename(item["path"])
    t = _Transfer(item, {"customer": item["customer"], "domain": item["domain"], "file": name,
                         "source_uri": source.uri(item["path"]), "bytes": item["size"], "records": None,
                         "sha256": None, "primary_uri": None, "secondary_uri": None, "copied_at": None,
                         "status": "failed", "error": None})
    for dest in dests:
        if dest.down:
            t.states[dest.role] = "failed"
            t.errors.append(f"{dest.role}: not attempted: {dest.down}")
            continue
        try:
            path = posixpath.join(dest.folder(item["domain"]), name)
            t.result[f"{dest.role}_uri"] = dest.backend.uri(path)
            existing = dest.backend.stat(path)
        except BackupError as e:
            t.states[dest.role] = "failed"
            t.errors.append(f"{dest.role}: {dest.fail(e)}")
            continue
        t.targets[dest.role] = path
        if existing is not None:
            t.found[dest.role] = existing
    feeds: dict[str, _Feed] = {}
    backends = {d.role: d.backend for d in dests}
    checksummers = _checksummers({role: backends[role] for role in t.targets})
    try:
        with source.open_read(item["path"]) as stream:
            feeds = {role: _Feed(backends[role], path) for role, path in t.targets.items() if role not in t.found}
            totals = read_once(stream, list(feeds.values()), on_bytes, list(set(checksummers.values())))
        after = source.stat(item["path"])
        if after is None or (after.size, after.mtime) != (item["size"], item["mtime"]) \
                or totals["bytes"] != item["size"]:
            raise FatalError(f"source {source.uri(item['path'])} changed while it was copied")
    except (BackupError, OSError) as e:  # OSError: a local source's read failed
        for role, feed in feeds.items():
            if isinstance(feed.outcome, FileStat):  # published a moment ago from a bad read: take it back
                _discard(backends[role], t.targets[role])
        error = classify(e, f"read {source.uri(item['path'])}")
        t.errors.append(f"source: {error.one_line()}")
        t.targets.clear()
        return t
    t.result.update(totals)
    t.checksums = {role: (c.spec, c.results()) for role, c in checksummers.items()}
    for role, feed in feeds.items():
        if isinstance(feed.outcome, FileStat):
            t.found[role] = feed.outcome
            t.written.add(role)
        else:
            error = classify(feed.outcome, f"write {backends[role].uri(t.targets[role])}")
            t.states[role] = "failed"
            t.errors.append(f"{role}: {next(d for d in dests if d.role == role).fail(error)}")
            del t.targets[role]
    return t


def _checksummers(backends: dict[str, StorageBackend]) -> dict[str, HdfsChecksummer]:
    """Per HDFS destination whose file checksum this process can compute: its checksummer (one per spec)."""
    by_spec: dict[ChecksumSpec, HdfsChecksummer] = {}
    out = {}
    for role, backend in backends.items():
        spec = backend.checksum_spec()
        if isinstance(spec, ChecksumSpec) and spec.computable() is None:
            out[role] = by_spec.setdefault(spec, HdfsChecksummer(spec))
    return out


def _discard(backend: StorageBackend, path: str) -> None:
    """Delete a copy we published ourselves and must take back (best effort)."""
    try:
        backend.delete(path)
    except BackupError as e:
        log.warning("could not remove %s: %s", backend.uri(path), e.one_line())


def _verify_by_file_checksum(transfers: list[_Transfer], dest: Destination) -> list[_Transfer]:
    """Verify copies on HDFS against the cluster's file checksum (no data read back); the transfers left to read back.

    A copy whose checksum the cluster computes in a way we did not (another block size or
    bytes-per-checksum, a combine mode we do not know) is read back instead, and its result says why.
    """
    left = []
    for t in transfers:
        if dest.role not in t.checksums:
            left.append(t)
            continue
        spec, computed = t.checksums[dest.role]
        path = t.targets[dest.role]
        try:
            reported, block_size = dest.backend.file_checksum(path)
        except BackupError as e:
            t.states[dest.role] = "failed"
            t.errors.append(f"{dest.role}: {dest.fail(e)}")
            continue
        verdict = matches(computed, reported) if block_size in (spec.block_size, 0) else None
        verified = t.result.setdefault("verified_by", {})
        if verdict is None:
            verified[dest.role] = (f"read back: the cluster's checksum {reported.get('algorithm')} with block size "
                                   f"{block_size} is not the {spec.crc}/{spec.bytes_per_crc}/{spec.block_size} one "
                                   f"computed while copying")
            left.append(t)
            continue
        verified[dest.role] = f"hdfs file checksum {reported.get('algorithm')}"
        if verdict:
            t.states[dest.role] = "copied" if dest.role in t.written else "present"
        else:
            _mismatch(t, dest, f"HDFS file checksum {reported.get('algorithm')} differs")
    return left


def _mismatch(t: _Transfer, dest: Destination, differs: str) -> None:
    """A copy that is not the source: ours is removed, someone else's is left alone; both fail the file."""
    uri = dest.backend.uri(t.targets[dest.role])
    t.states[dest.role] = "failed"
    if dest.role in t.written:
        _discard(dest.backend, t.targets[dest.role])  # our own copy from a moment ago, and a wrong one
        error = ChecksumMismatch(f"{uri} does not match the source ({differs}); removed")
    else:
        error = AlreadyExists(f"a different file is already at {uri} ({differs}); not overwritten")
    t.errors.append(f"{dest.role}: {error.one_line()}")


def _verify(transfers: list[_Transfer], dest: Destination) -> None:
    """Check size and checksum of every file of ``transfers`` at ``dest``: on HDFS the cluster's file
    checksum where it can be matched, else SHA-256 read back in one batch."""
    mine = [t for t in transfers if dest.role in t.targets]
    if not mine:
        return
    sizes_ok = [t for t in mine if t.found[dest.role].size == t.result["bytes"]]
    for t in mine:
        if t not in sizes_ok:
            _mismatch(t, dest, f"{t.found[dest.role].size} bytes instead of {t.result['bytes']}")
    sizes_ok = _verify_by_file_checksum(sizes_ok, dest)
    mine = sizes_ok
    try:
        digests = dest.backend.sha256_many([t.targets[dest.role] for t in sizes_ok]) if sizes_ok else {}
    except ConnectionFailed as e:
        line = dest.fail(e)
        for t in mine:
            t.states[dest.role] = "failed"
            t.errors.append(f"{dest.role}: {line}")
        return
    except BackupError:
        digests = {}  # one file vanished or is unreadable: check them one by one to name it
        for t in sizes_ok:
            try:
                digests[t.targets[dest.role]] = dest.backend.sha256(t.targets[dest.role])
            except BackupError as e:
                digests[t.targets[dest.role]] = e
    for t in mine:
        path = t.targets[dest.role]
        got = digests.get(path)
        if isinstance(got, BackupError):
            t.states[dest.role] = "failed"
            t.errors.append(f"{dest.role}: {dest.fail(got)}")
            continue
        if got == t.result["sha256"]:
            t.states[dest.role] = "copied" if dest.role in t.written else "present"
            t.result.setdefault("verified_by", {}).setdefault(dest.role, "sha256 read back")
            continue
        _mismatch(t, dest, f"sha256 {got[:12]}… instead of {t.result['sha256'][:12]}…" if got else "unreadable")


def copy_files(items: list[dict], source_of: Callable[[dict], StorageBackend], dests: list[Destination],
               on_bytes: Callable[[int], None]) -> list[dict]:
    """Back up a batch of files: one read each, then one checksum batch per destination; results, never raises."""
    sources = [source_of(item) for item in items]
    # Several files at once: one file's fsync and rename overlap the next one's read and writes.
    with ThreadPoolExecutor(max_workers=min(TRANSFER_THREADS, len(items)), thread_name_prefix="transfer") as pool:
        transfers = list(pool.map(lambda item, source: _transfer(item, source, dests, on_bytes), items, sources))
    with ThreadPoolExecutor(max_workers=len(dests), thread_name_prefix="verify") as pool:
        list(pool.map(lambda dest: _verify(transfers, dest), dests))
    copied_at = utc_z()
    for t in transfers:
        if all(t.states.get(d.role) in ("copied", "present") for d in dests):
            t.result["status"] = "copied" if "copied" in t.states.values() else "present"
        t.result["copied_at"] = copied_at
        t.result["error"] = "; ".join(t.errors) or None
    return [t.result for t in transfers]


def copy_file(item: dict, source: StorageBackend, dests: list[Destination],
              on_bytes: Callable[[int], None]) -> dict:
    """Back up one file to every destination in one read; the result says how it went."""
    return copy_files([item], lambda _: source, dests, on_bytes)[0]


def batches(items: list[dict], max_files: int = 32, max_bytes: int = 512 * 2**20) -> Iterator[list[dict]]:
    """Consecutive groups of files verified together (bounded so a killed task loses little)."""
    batch: list[dict] = []
    size = 0
    for item in items:
        if batch and (len(batch) >= max_files or size + item["size"] > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item["size"]
    if batch:
        yield batch


def _storage_of(uri: str) -> tuple[str, str]:
    """(scheme, host) of a URI: two paths can be renamed into each other only on the same storage."""
    parts = urlsplit(uri)
    return parts.scheme, parts.netloc


def move_base(res: Resources, cfg: CustomerFilesSettings) -> tuple[tuple[str, str], str] | None:
    """Storage and folder receiving moved sources (after_backup: move), else None."""
    if cfg.after_backup != "move":
        return None
    mover, base = open_location(res.settings, cfg.move_to)
    with mover:
        return _storage_of(mover.uri(base)), base


def _after_backup(cfg: CustomerFilesSettings, source: StorageBackend, item: dict,
                  moved_to: tuple[tuple[str, str], str] | None) -> str | None:
    """Move or delete a source file whose copies are both verified; returns an error line or None."""
    try:
        if cfg.after_backup == "delete":
            source.delete(item["path"])
        elif cfg.after_backup == "move":
            storage, base = moved_to
            if storage != _storage_of(source.uri(item["path"])):
                raise ConfigError("customer_files.move_to must be on the same storage as the source folders")
            folder = posixpath.join(base, item["customer"], item["domain"])
            source.mkdir(folder)
            source.rename(item["path"], posixpath.join(folder, posixpath.basename(item["path"])))
    except BackupError as e:
        return f"after_backup {cfg.after_backup}: {e.one_line()}"
    return None


def copy_customer(ctx: PhaseContext, customer: str) -> dict:
    """Copy one customer's planned files to both locations; per-file failures are data in the results."""
    res, cfg = ctx.res, config(ctx.res)
    plan = load_plan(res, ctx.job_id, customer)
    done = load_results(res, ctx.job_id, customer)
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
    dests = [Destination(role, getattr(where, role)) for role in DESTINATIONS]
    with ExitStack() as stack:
        if todo:
            for dest in dests:
                dest.open(res.settings)
                if dest.backend is not None:
                    stack.enter_context(dest.backend)
        sources: dict[int, StorageBackend] = {}

        def source_of(item: dict) -> StorageBackend:
            if item["source"] not in sources:
                backend, _ = open_location(res.settings, cfg.source_dirs[item["source"]])
                sources[item["source"]] = stack.enter_context(backend)
            return sources[item["source"]]

        for batch in batches(todo):
            ctx.commit_check()  # stop at once if another run took over the lock
            before = progress["bytes_done"]
            results = copy_files(batch, source_of, dests, on_bytes)
            progress["bytes_done"] = before + sum(item["size"] for item in batch)
            for item, result in zip(batch, results):
                if result["status"] != "failed":
                    _remember(res, ctx.job_id, customer, item, result)
                    problem = _after_backup(cfg, source_of(item), item, moved_to)
                    if problem:
                        result["error"] = problem
                _save_result(res, ctx.job_id, customer, plan_key(item), result)
                done[plan_key(item)] = result
                progress["files_done"] += 1
                progress["failed"] += result["status"] == "failed"
            ctx.progress(**progress)
    ctx.progress(force=True, **progress)
    summary = summarize(done.values())
    note = f"{summary['copied']} copied, {summary['present']} already present, {summary['failed']} failed"
    # The last progress stays: a customer copied between two looks of `backupctl run --wait` still shows its files.
    ctx.done(note=note, state="failed" if summary["failed"] else "success", keep_progress=True)
    return {"job_id": ctx.job_id, "customer": customer, **summary}


def _remember(res: Resources, job_id: str, customer: str, item: dict, result: dict) -> None:
    """Ledger entry for a file whose copies are verified."""
    entry = {"sha256": result["sha256"], "records": result["records"], "job_id": job_id, "at": result["copied_at"]}
    with _redis_errors("write ledger"):
        res.redis.hset(_key(res, "ledger", customer), ledger_field(item["path"], item["size"], item["mtime"]),
                       json.dumps(entry))


def _first_file_error(res: Resources, job_id: str, customer: str) -> str:
    """``, e.g. <the first failed file's reason>``: the alert then names the cause (a path, a user, a refusal)."""
    try:
        results = load_results(res, job_id, customer)
    except BackupError:
        return ""
    for key in sorted(results):
        if results[key].get("status") == "failed" and results[key].get("error"):
            return f", e.g. {results[key]['file']}: {results[key]['error'][:500]}"
    return ""


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

def manifest_rows(res: Resources, rec: dict) -> list[dict]:
    """One row per planned file, in plan order; a file its task never reached is a failed row."""
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
            rows.append(row)
    return rows


def write_manifest(path: Path, rows: list[dict]) -> None:
    """The manifest CSV, written to a temp name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(MANIFEST_COLUMNS)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row[c] for c in MANIFEST_COLUMNS])
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def sql_value(value) -> str:
    """A value as a SQL literal: NULL, an integer, or a quoted string with \\ and ' escaped."""
    if value is None:
        return "NULL"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"no SQL literal for {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    text = CONTROL_CHARS.sub(" ", value)  # never in paths; error texts are one line already
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ensure_table(hive, table: TableName) -> str:
    """Create a count table if it is missing; refuse one whose columns differ."""
    try:
        columns = hive.columns(table)
    except NotFound:
        hive.execute(f"CREATE DATABASE IF NOT EXISTS `{table.db}`", f"create database {table.db}")
        cols = ", ".join(f"`{name}` {kind}" for name, kind in TABLE_COLUMNS)
        hive.execute(f"CREATE TABLE IF NOT EXISTS {table.sql} ({cols}) STORED AS PARQUET", f"create table {table}")
        return "created"
    expected = [name for name, _ in TABLE_COLUMNS]
    if [c.lower() for c in columns] != expected:
        raise FatalError(f"table {table} has columns {columns}, expected {expected}")
    return "exists"


def load_into_hive(res: Resources, rows: list[dict], job_id: str, commit_check: Callable[[], None]) -> dict:
    """Staging ← manifest (INSERT OVERWRITE); final ← staging rows not yet in it; refresh final."""
    cfg = config(res)
    staging, final = TableName.parse(cfg.staging_table), TableName.parse(cfg.final_table)
    # The manifest's columns in table order, then the job id.
    values = [f"({', '.join(sql_value(r.get(c)) for c in MANIFEST_COLUMNS)}, {sql_value(job_id)})" for r in rows]
    with res.hive() as hive:
        ensure_table(hive, staging)
        ensure_table(hive, final)
        for start in range(0, len(values), ROWS_PER_INSERT):
            verb = "INSERT OVERWRITE TABLE" if start == 0 else "INSERT INTO TABLE"
            hive.execute(f"{verb} {staging.sql} VALUES {', '.join(values[start:start + ROWS_PER_INSERT])}",
                         f"load manifest into {staging}")
        commit_check()
        key = " AND ".join(f"s.`{c}` = f.`{c}`" for c in ("customer", "domain", "file_name", "sha256"))
        statuses = ", ".join(sql_value(s) for s in LOADED_STATUSES)
        # Only rows the final table lacks: a rerun or a redelivered collect never counts a file twice.
        hive.execute(f"INSERT INTO TABLE {final.sql} SELECT s.* FROM {staging.sql} s LEFT OUTER JOIN {final.sql} f "
                     f"ON {key} WHERE f.`file_name` IS NULL AND s.`status` IN ({statuses})",
                     f"merge {staging} into {final}")
        refreshed = hive.refresh(final)
        loaded = int(hive.query(f"SELECT count(*) FROM {final.sql} WHERE `job_id` = {sql_value(job_id)}",
                                f"count rows of this run in {final}")[0][0])
    return {"staging_rows": len(values), "final_rows_added": loaded, "refresh": refreshed}


def collect_phase(ctx: PhaseContext) -> dict:
    """The chord's body: manifest CSV → Hive staging → final count table; totals per customer."""
    res, rec = ctx.res, ctx.rec
    cfg = config(res)
    rows = manifest_rows(res, rec)
    manifest = res.settings.path(cfg.manifest_dir) / f"{run_id(rec['created'], rec['job_id'])}.csv"
    write_manifest(manifest, rows)
    if rows:
        hive = load_into_hive(res, rows, ctx.job_id, ctx.commit_check)
    else:
        hive = {"staging_rows": 0, "final_rows_added": 0, "refresh": "skipped (nothing to load)"}
    errors = customer_errors(res, ctx.job_id)
    customers = rec["outputs"].get("customers", {})
    for customer in cfg.customers:
        counts = summarize(r for r in rows if r["customer"] == customer)
        entry = customers.setdefault(customer, {})
        entry.update({k: counts[k] for k in ("copied", "present", "failed", "bytes", "records")})
        entry["skipped"] = sum(entry.get(k, 0) for k in ("unchanged", "settling", "deferred"))
        entry["error"] = errors.get(customer)
    totals = {k: sum(c.get(k) or 0 for c in customers.values())
              for k in ("found", "planned", "unchanged", "settling", "deferred", "skipped", "copied", "present",
                        "failed", "bytes", "records")}
    ctx.done({"customers": customers, "totals": totals, "manifest": str(manifest), "hive": hive},
             note=f"{len(rows)} manifest rows; {hive['final_rows_added']} rows added to {cfg.final_table}")
    return {"job_id": ctx.job_id, **totals}


# -- flag ------------------------------------------------------------------------

def outcome_of(customers: dict) -> tuple[str, list[str]]:
    """SUCCESS, PARTIAL (some customers failed) or FAIL (all did), and the failed customers."""
    failed = [c for c, v in customers.items() if v.get("failed") or v.get("error")]
    if not failed:
        return "SUCCESS", []
    return ("FAIL" if len(failed) == len(customers) else "PARTIAL"), failed


def flag_text(outcome: str, rec: dict) -> str:
    """Content of the status flag file: the outcome, then key=value counts."""
    out = rec.get("outputs", {})
    totals = out.get("totals") or out.get("discovered") or {}
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


def flag_phase(ctx: PhaseContext) -> dict:
    """Write SUCCESS / PARTIAL / FAIL with counts; finish the job, alerting once per episode unless SUCCESS."""
    res, rec = ctx.res, ctx.rec
    customers = rec["outputs"].get("customers", {})
    outcome, failed = outcome_of(customers)
    ctx.commit_check()
    uri = write_flag(res, outcome, rec)
    ctx.done({"flag": outcome, "flag_uri": uri})
    if outcome == "SUCCESS":
        rec = finish_job(ctx)
        return {"job_id": ctx.job_id, "state": rec["state"], "flag": outcome}
    details = []
    for c in failed:
        v = customers[c]
        details.append(f"{c} ({v.get('error') or str(v.get('failed')) + ' file(s) failed' + _first_file_error(res, ctx.job_id, c)})")
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


def write_fail_flag(res: Resources, rec: dict) -> None:
    """After a failure outside the flag phase: FAIL flag and record (not when another run owns the lock)."""
    if (rec.get("error") or "").startswith(LockLost.__name__):
        return
    uri = write_flag(res, "FAIL", rec)

    def change(r):
        r["outputs"].update(flag="FAIL", flag_uri=uri)
    res.jobs.update(rec["job_id"], change)


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
    target_argument=None,
    target_help="every configured customer",
    fixed_target=TARGET,
)
