"""The ``edge-export`` workflow: a table's window → ``;``-CSV.gz → verified copy on the backup server.

Phases (one Celery task each, chained, declared in ``DEFINITION``): lock → export → transfer → cleanup → finish.
Every function here takes ``Resources`` and a job id and returns small JSON;
none needs a worker.

Files:
  local   <export_dir>/<db>.<table>/<run_id>/<db>.<table>_<start>-<end>.csv.gz
  remote  <remote_dir>/<db>.<table>/<run_id>/<same name>
where ``run_id`` is ``<UTC time>-<job id prefix>``: every run gets its own
folder, so no run overwrites another's backup.

What a phase hands to later ones through the job record's ``outputs`` is declared below
(``Exported``, ``Resumed``, ``Transferred``); a later run of the same window reads a failed
run's ``Exported`` to resume from its archive.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import posixpath
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from base.text import run_id
from backup.archive import CsvGzipWriter, NotText, fsync_dir, server_line_expression
from base.fanout import run_threads
from base.errors import BackupError, FatalError, InvalidInput, LockLost, NotFound
from base.identifiers import TableName, check_job_id, identifier
from backup.jobs import phase_entry
from backup.enqueue import fail_request
from backup.outputs import PhaseOutputs
from backup.resources import Resources
from backup.runner import PhaseContext, finish_job, take_lock
from backup.workflow import Option, Phase, Workflow
from backup.window import Window, export_window
from connectors.hive import sql_date
from connectors.sftp import local_sha256, upload, verify_and_commit

log = logging.getLogger(__name__)

WORKFLOW = "edge-export"


@dataclass(frozen=True)
class Exported(PhaseOutputs):
    """export → transfer, cleanup, finish (and a later run of the same window, which may resume from it):
    the local archive, its counts and checksum, and the run id naming its folders."""

    written_by: ClassVar[str] = "export"
    rows: int
    bytes: int
    sha256: str
    local_path: str
    run_id: str


@dataclass(frozen=True)
class Resumed(PhaseOutputs):
    """export → transfer: the failed run whose verified archive this run reuses (told where it went)."""

    written_by: ClassVar[str] = "export"
    resumed_from: str


@dataclass(frozen=True)
class Transferred(PhaseOutputs):
    """transfer → cleanup, finish: the verified copy on the backup server (also set on the resumed runs)."""

    written_by: ClassVar[str] = "transfer"
    remote_uri: str


def validate_request(res: Resources, table: str, months=None, end=None) -> tuple[TableName, Window]:
    """Check the arguments of a request; raise InvalidInput naming the problem."""
    name = TableName.parse(table)
    cfg = res.settings.edge_export
    if months is None:
        months = cfg.months
    elif isinstance(months, str) and months.isascii() and months.isdigit() and len(months) <= 4:
        months = int(months)
    window = export_window(months, end, cfg.timezone)
    identifier(cfg.partition_column, "partition column")
    return name, window


def submit(res: Resources, table: str, months=None, end=None, job_id: str | None = None) -> dict:
    """Validate and create the job record; a bad request is recorded as failed and starts nothing."""
    job_id = job_id or uuid.uuid4().hex
    args = {"table": table, "months": months, "end": end}
    try:
        name, window = validate_request(res, table, months, end)
    except InvalidInput as e:
        res.jobs.create(job_id, WORKFLOW, str(table), args, DEFINITION.phase_names)
        return fail_request(res, job_id, e)
    args.update(window=window.as_dict())
    return res.jobs.create(job_id, WORKFLOW, str(name), args, DEFINITION.phase_names)


def _window(rec: dict) -> Window:
    w = rec["args"]["window"]
    return Window(dt.date.fromisoformat(w["start"]), dt.date.fromisoformat(w["end"]))


def archive_name(table: TableName, window: Window) -> str:
    """File name carrying db, table and window."""
    return f"{table.db}.{table.table}_{window.label}.csv.gz"


_RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f-]{8}")


def checked_archive(res: Resources, rec: dict) -> tuple[Exported, Path]:
    """The record's archive and its local path, re-validated before any phase uses them; InvalidInput otherwise.

    A job record is data anyone with Redis write access could change: ``local_path`` must be
    ``<export_dir>/<db.table>/<run id>/<archive name of this window>`` (the target and window re-parsed,
    a resumed run's folder being another run id of the same table), and ``run_id`` a run id, so that
    cleanup deletes, and transfer writes, only where this workflow does.
    """
    table = TableName.parse(rec["target"])
    archive = Exported.read(rec)
    local = Path(archive.local_path) if isinstance(archive.local_path, str) else None
    expected_root = res.settings.path(res.settings.edge_export.export_dir) / str(table)
    if local is None or not isinstance(archive.run_id, str) or not _RUN_ID.fullmatch(archive.run_id) \
            or str(local) != os.path.normpath(archive.local_path) or local.parent.parent != expected_root \
            or not _RUN_ID.fullmatch(local.parent.name) or local.name != archive_name(table, _window(rec)):
        raise InvalidInput(f"job {rec['job_id']}: the record's archive {str(archive.local_path)[:200]!r} "
                           f"(run id {str(archive.run_id)[:40]!r}) is not this job's archive under {expected_root}; "
                           f"the record was changed, nothing is touched")
    return archive, local


# -- lock ----------------------------------------------------------------------

def lock_phase(ctx: PhaseContext) -> dict:
    """Take the (edge-export, table) lock or end the job as skipped, naming the holder."""
    return take_lock(ctx, WORKFLOW)


# -- export --------------------------------------------------------------------

def _resumable(res: Resources, rec: dict) -> dict | None:
    """The previous run's archive if it failed after export with the same window and still verifies."""
    prev = res.jobs.last(WORKFLOW, rec["target"], before=rec["job_id"])
    if not prev or prev["state"] != "failed" or prev.get("args", {}).get("window") != rec["args"]["window"]:
        return None
    if phase_entry(prev, "export")["state"] not in ("success", "skipped") or prev.get("phase") in ("lock", "export"):
        return None
    if Exported.find(prev) is None:
        return None
    try:
        archive, path = checked_archive(res, prev)
    except InvalidInput as e:
        log.warning("not resuming from job %s: %s", prev["job_id"], e)
        return None
    if not archive.sha256 or not path.is_file() or path.stat().st_size != archive.bytes:
        return None
    if local_sha256(path) != archive.sha256:
        log.warning("archive of job %s no longer matches its checksum; exporting again", prev["job_id"])
        return None
    return prev


def export_phase(ctx: PhaseContext) -> dict:
    """Export the window to a local gzip'ed CSV (or reuse the last failed run's verified archive)."""
    res, rec = ctx.res, ctx.rec
    done = Exported.find(rec)
    if done is not None and done.local_path and Path(done.local_path).is_file() \
            and local_sha256(Path(done.local_path)) == done.sha256:
        return {"job_id": ctx.job_id, **_summary(done), "note": "already exported"}
    prev = _resumable(res, rec)
    if prev is not None:
        keep = Exported.read(prev)
        note = f"resumed: reusing verified archive of failed job {prev['job_id']}"
        ctx.done({**keep.as_outputs(), **Resumed(resumed_from=prev["job_id"]).as_outputs()}, note=note,
                 state="skipped")
        return {"job_id": ctx.job_id, **_summary(keep), "note": note}

    table = TableName.parse(rec["target"])
    window = _window(rec)
    cfg = res.settings.edge_export
    folder = res.settings.path(cfg.export_dir) / str(table) / run_id(rec["created"], rec["job_id"])
    final = folder / archive_name(table, window)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        stats = export_to_file(res, table, window, final, ctx)  # NotFound before any file if the table is unknown
    except BaseException:
        # export_to_file removed its temporary files; a failed run leaves no empty folder behind either
        # (disk full, a query error).  A folder holding anything (an earlier delivery's archive) stays.
        try:
            folder.rmdir()
        except OSError:
            pass
        raise
    ctx.done(Exported(rows=stats["rows"], bytes=stats["bytes"], sha256=stats["sha256"], local_path=str(final),
                      run_id=run_id(rec["created"], rec["job_id"])).as_outputs(),
             note=f"CSV lines written by {stats['formatted_by']}")
    return {"job_id": ctx.job_id, **stats}


def _summary(archive: Exported | None) -> dict:
    """The archive's counts for a task's answer (None if the record has none)."""
    return {"rows": archive.rows if archive else None, "bytes": archive.bytes if archive else None,
            "sha256": archive.sha256 if archive else None}


def window_predicate(window: Window, column: str) -> str:
    """The WHERE condition selecting one window (the column validated, the dates formatted by us)."""
    col = f"`{identifier(column, 'partition column')}`"
    return f"{col} >= {sql_date(window.start)} AND {col} < {sql_date(window.end)}"


def export_query(table: TableName, window: Window, column: str, line: str | None = None) -> str:
    """The SELECT for one window (identifiers already validated, dates formatted by us): every column, or with
    ``line`` (``line_expression``) one text value per row, its CSV line."""
    select = "*" if line is None else f"{line} AS `line`"
    return f"SELECT {select} FROM {table.sql} WHERE {window_predicate(window, column)}"


def line_expression(res: Resources, hive, table: TableName) -> str | None:
    """The SQL that has the engine write each CSV line of ``table``, or None to format its columns here.

    Only on Spark, where ``SERVER_FIELDS`` was compared with this project's text, with
    ``edge_export.server_formatting`` on, and every column of a type listed there.  NotFound if the table does
    not exist.  Costs one query that reads no rows (and, on a new connection, the engine's ``version()``)."""
    types = hive.column_types(table)
    if not res.settings.edge_export.server_formatting or hive.engine() != "spark":
        return None
    return server_line_expression(types)


def export_to_file(res: Resources, table: TableName, window: Window, final: Path,
                   ctx: PhaseContext | None = None) -> dict:
    """Stream the window into ``final`` atomically; several month ranges in parallel if configured.

    The first range streams straight into the archive's temporary file; the
    others into gzip members that are appended, in window order, through the
    same hashing sink, so rows, bytes and SHA-256 come out of the writing pass.
    The lines are written by the SQL engine where ``line_expression`` allows it, else formatted here from the
    columns; the text is the same bytes either way.  If the engine's lines are not UTF-8 text (``NotText``: not
    seen from Spark, which sends Java strings), the export starts over with the columns: a slower export, never
    a different archive.  ``formatted_by`` in the answer says which way it went.
    """
    with res.hive() as hive:
        line = line_expression(res, hive, table)  # NotFound before anything is written if the table is unknown
    if line is not None:
        try:
            return _export_to_file(res, table, window, final, ctx, line)
        except NotText as e:
            log.warning("export of %s: %s; exporting the window again with the columns formatted here", table, e)
    return _export_to_file(res, table, window, final, ctx, None)


def _export_to_file(res: Resources, table: TableName, window: Window, final: Path, ctx: PhaseContext | None,
                    line: str | None) -> dict:
    """``export_to_file`` one way: the lines from the engine (``line``) or the columns formatted here (None)."""
    cfg = res.settings.edge_export
    pieces = window.split(cfg.streams)
    tmp = final.with_name(f".{final.name}.part")
    parts = [tmp] + [final.with_name(f".{final.name}.{i}.part") for i in range(1, len(pieces))]
    writers = [CsvGzipWriter(p, cfg.compresslevel) for p in parts]
    totals = {"rows": 0, "bytes": 0}
    lock = threading.Lock()

    def progress(rows: int, nbytes: int) -> None:
        with lock:
            totals["rows"] += rows
            totals["bytes"] += nbytes
            snapshot = dict(totals)
        if ctx:
            ctx.progress(**snapshot)

    def run(piece: Window, writer: CsvGzipWriter, last: bool) -> None:
        with res.hive() as hive:
            sql = export_query(table, piece, cfg.partition_column, line)
            for cols in hive.stream_raw_columns(sql, f"export {table} {piece.label}"):
                before = writer.bytes_written  # compressed behind the fetch: the count trails by a batch or two
                if line is None:
                    writer.write_batch(cols)
                else:
                    writer.write_lines(cols[0])
                progress(len(cols[0].values), writer.bytes_written - before)
        if last:
            writer.close()

    try:
        run_threads([lambda w=w, wr=wr, i=i: run(w, wr, i > 0) for i, (w, wr) in enumerate(zip(pieces, writers))],
                    "export")
        stats = writers[0].close(append=parts[1:])
        if ctx:
            ctx.commit_check()
        tmp.rename(final)
        fsync_dir(final.parent)
    finally:
        for w in writers[1:]:
            w.abort()
        if not final.exists():
            writers[0].abort()
    return {"rows": sum(w.rows for w in writers), "bytes": stats["bytes"], "sha256": stats["sha256"],
            "formatted_by": "the SQL engine" if line is not None else "the worker"}


# -- transfer ------------------------------------------------------------------

def remote_paths(res: Resources, rec: dict) -> tuple[str, str]:
    """(final, temporary) remote paths of this run's archive."""
    archive, local = checked_archive(res, rec)
    name = local.name
    folder = posixpath.join(res.settings.sftp.remote_dir, str(TableName.parse(rec["target"])), archive.run_id)
    return posixpath.join(folder, name), temp_path(folder, name, rec["job_id"])


def temp_path(folder: str, name: str, job_id: str) -> str:
    """The remote temporary name of job ``job_id``'s upload of archive ``name``: used by that job alone."""
    return posixpath.join(folder, f".{name}.{job_id[:12]}.part")


def transfer_phase(ctx: PhaseContext) -> dict:
    """Upload to a temporary name, verify the remote SHA-256, rename into place (fenced)."""
    res, rec = ctx.res, ctx.rec
    archive, local = checked_archive(res, rec)
    if not local.is_file():
        raise NotFound(f"local archive {local} is missing; nothing to transfer")
    final, tmp = remote_paths(res, rec)
    target = res.sftp()
    size = local.stat().st_size
    # One control connection for the whole phase: it waits (kept alive) while OpenSSH sends the bytes,
    # which saves a handshake per archive; a connection that died meanwhile is replaced, never retried as
    # a failure of an upload that succeeded.
    sess = target.connect()
    try:
        removed = remove_leftovers(res, sess, rec["target"]) + remove_resumed_temps(res, sess, rec)
        if removed:
            log.info("removed %d temporary file(s) left by earlier failed runs: %s", len(removed), removed)
        sess.makedirs(posixpath.dirname(final))
        existing = sess.stat(final)
        if existing is not None and existing.st_size == size and sess.sha256(final) == archive.sha256:
            ctx.done(Transferred(remote_uri=target.uri(final)).as_outputs(),
                     note="already on the backup server (verified)")
            return {"job_id": ctx.job_id, "remote_uri": target.uri(final), "note": "already present"}
        sess.remove(tmp)  # a previous delivery of this phase may have left it half-written
        sent = {"n": 0}

        def progress(n: int) -> None:
            ctx.raise_if_lost()  # stop sending the moment the renewer finds the lock gone
            sent["n"] += n
            ctx.progress(bytes=sent["n"], total_bytes=size)

        try:
            uploaded = upload(target, local, tmp, progress=progress)
            if not sess.alive():
                sess.close()
                sess = target.connect()
            outcome = verify_and_commit(sess, tmp, final, archive.sha256, ctx.commit_check, uploaded)
        except LockLost:
            # The job lost its lock (another run holds the target, or the job was failed meanwhile: a paused
            # holder that woke up, a fail-over that lost the lock key). This temp name is the job's own and
            # nobody will finish this upload: remove it, or remember it for the target's next transfer.
            sess = _remove_own_temp(res, target, sess, rec["target"], tmp)
            raise
    finally:
        sess.close()
    if outcome == "committed":
        outcome = f"committed (server SHA-256 by {uploaded.verified_by})"
    ctx.done(Transferred(remote_uri=target.uri(final)).as_outputs(), note=outcome)
    record_completion(res, rec, target.uri(final))
    return {"job_id": ctx.job_id, "remote_uri": target.uri(final), "note": outcome}


def _remove_own_temp(res: Resources, target, sess, table: str, tmp: str):
    """Remove a temp file this job will never finish, on ``sess`` or a new connection if it died; when the
    server cannot be reached, the path is left to the target's next transfer (``remove_leftovers``).
    Returns the session to close."""
    try:
        if not sess.alive():
            sess.close()
            sess = target.connect()
        sess.remove(tmp)
    except BackupError as e:
        log.warning("could not remove the temp file %s now (%s); the next transfer of %s removes it",
                    tmp, e.one_line(), table)
        try:
            res.redis.sadd(_leftovers_key(res, table), tmp)
        except Exception as lost:  # Redis unreachable too: the path is in the log, and only there
            log.error("temp file %s left on the backup server and not remembered (%s): remove it by hand", tmp, lost)
    return sess


def record_completion(res: Resources, rec: dict, remote_uri: str) -> None:
    """Tell the failed runs whose archive this run resumed where that archive now lies.

    A resumed run uploads the earlier run's archive into that run's folder (the
    folder is named after the run that exported it), so each failed record of
    the resume chain gets ``remote_uri`` and ``completed_by``: the folder on the
    backup server is never without a record that names it.
    """
    prev_id = _resumed_from(rec)
    for _ in range(20):  # a chain of failed retries of one window; bounded against a corrupt record
        if not prev_id:
            return
        prev = res.jobs.find(prev_id)
        if prev is None:
            return

        def completed(r):
            r["outputs"].update(Transferred(remote_uri=remote_uri).as_outputs(), completed_by=rec["job_id"])
        res.jobs.update(prev_id, completed)
        prev_id = _resumed_from(prev)


def _resumed_from(rec: dict) -> str | None:
    resumed = Resumed.find(rec)
    return resumed.resumed_from if resumed else None


def remove_resumed_temps(res: Resources, sess, rec: dict) -> list[str]:
    """Remove the temp files of the failed runs this run resumed (caller holds the lock); returns those removed.

    They lie in this run's folder (the archive's run id names it), under names that only those jobs used,
    and those jobs ended: nothing will finish them.  Normally each one's failure cleanup removed its own;
    this covers a cleanup that never ran or could not reach the server and Redis either.  Costs one
    ``stat`` round trip per run of the resume chain, and a ``remove`` for each file found.
    """
    _, local = checked_archive(res, rec)
    folder = posixpath.dirname(remote_paths(res, rec)[0])
    removed, prev_id = [], _resumed_from(rec)
    for _ in range(20):  # bounded like record_completion's walk
        prev = res.jobs.find(prev_id) if prev_id else None
        if prev is None or prev["state"] != "failed":
            break
        # A record is data: its id must be a job id before it names a file (check_job_id raises InvalidInput).
        tmp = temp_path(folder, local.name, check_job_id(prev.get("job_id")))
        if sess.stat(tmp) is not None:
            sess.remove(tmp)
            removed.append(tmp)
        prev_id = _resumed_from(prev)
    return removed


def _leftovers_key(res: Resources, target: str) -> str:
    return f"{res.settings.redis.key_prefix}:leftover:{WORKFLOW}:{target}"


def discard_remote_temp(res: Resources, rec: dict) -> None:
    """Remove this run's temporary remote file after a final failure.

    When the backup server cannot be reached now (the failure was often that),
    the path is remembered in Redis and the next transfer of the same target
    removes it before it uploads: no temporary file is left behind for good.
    """
    archive = Exported.find(rec)
    if archive is None or not archive.local_path:
        return
    _, tmp = remote_paths(res, rec)
    try:
        with res.sftp().connect() as sess:
            sess.remove(tmp)
    except BackupError:
        res.redis.sadd(_leftovers_key(res, rec["target"]), tmp)
        raise


def remove_leftovers(res: Resources, sess, target: str) -> list[str]:
    """Remove the temporary files earlier failed runs of ``target`` could not delete (caller holds the lock)."""
    key = _leftovers_key(res, target)
    removed = []
    for raw in res.redis.smembers(key):
        path = raw.decode()
        root = posixpath.join(res.settings.sftp.remote_dir, target) + "/"
        # Only temporary names under this target's folder: a value in Redis never picks what is deleted.
        if path.startswith(root) and posixpath.basename(path).startswith(".") and path.endswith(".part") \
                and ".." not in path:
            sess.remove(path)
            removed.append(path)
        res.redis.srem(key, raw)
    return removed


# -- cleanup / finish ----------------------------------------------------------

def cleanup_phase(ctx: PhaseContext) -> dict:
    """Delete the local archive now that the remote copy is verified (unless keep_local)."""
    transferred = Transferred.find(ctx.rec)
    if transferred is None or not transferred.remote_uri:
        raise FatalError("cleanup reached without a verified remote copy; keeping the local archive")
    if ctx.res.settings.edge_export.keep_local:
        ctx.done({"local_kept": True}, note="keep_local: archive kept")
        return {"job_id": ctx.job_id, "local_kept": True}
    _, local = checked_archive(ctx.res, ctx.rec)  # only this workflow's archive is ever deleted
    local.unlink(missing_ok=True)
    try:
        local.parent.rmdir()
    except OSError:
        pass
    ctx.done({"local_kept": False})
    return {"job_id": ctx.job_id, "local_kept": False}


def finish_phase(ctx: PhaseContext) -> dict:
    """Record success and release the lock."""
    rec = finish_job(ctx)
    transferred = Transferred.find(rec)  # a report: what the record lacks is None
    return {"job_id": ctx.job_id, "state": rec["state"], **_summary(Exported.find(rec)),
            "remote_uri": transferred.remote_uri if transferred else None}


# -- plan ----------------------------------------------------------------------

def _run_folder_pattern() -> str:
    return "<UTC time>-<job id[:8]>"  # run_id(): known once the job record exists


def plan(res: Resources, table: str, months=None, end=None) -> dict:
    """What a run of this request would do, touching nothing (``backupctl plan edge-export``).

    The window comes from ``validate_request``, the SQL from ``export_query`` (per stream
    from ``Window.split``), the resume decision from ``_resumable``, the paths from the same
    names the export and transfer phases use.  The row estimate is a ``count(*)`` over the
    window on HiveServer2 (the export's own WHERE condition): exact for the moment it ran,
    and one scan of the window's partitions.  Reads Redis (job records, the lock key) and
    Hive; writes nothing.
    """
    from backup.retention import preview

    name, window = validate_request(res, table, months, end)
    cfg = res.settings.edge_export
    holder = res.locks.holder(WORKFLOW, str(name))
    # The record a run would get, minus its id: what _resumable looks at (target, window; no job yet).
    draft = {"job_id": None, "target": str(name), "args": {"window": window.as_dict()}}
    prev = _resumable(res, draft)
    with res.hive() as hive:
        line = line_expression(res, hive, name)  # NotFound names the table, as the export would
        rows = int(hive.query(f"SELECT count(*) FROM {name.sql} WHERE {window_predicate(window, cfg.partition_column)}",
                              f"count the rows of {name} in {window.label}")[0][0])
    file_name = archive_name(name, window)
    if prev is not None:
        archive = Exported.read(prev)
        folder = archive.run_id
        resume = {"job_id": prev["job_id"], "local_path": archive.local_path, "rows": archive.rows,
                  "bytes": archive.bytes, "sha256": archive.sha256}
    else:
        folder, resume = _run_folder_pattern(), None
    local = str(res.settings.path(cfg.export_dir) / str(name) / folder / file_name) if prev is None \
        else resume["local_path"]
    return {
        "workflow": WORKFLOW, "target": str(name),
        "window": {**window.as_dict(), "label": window.label, "months": months if months is not None else cfg.months},
        "sql": [export_query(name, piece, cfg.partition_column, line) for piece in window.split(cfg.streams)],
        "csv_lines_written_by": "the SQL engine" if line is not None else "the worker",
        "rows_estimate": {"rows": rows, "source": "count(*)"},
        "local_path": local,
        "remote_uri": res.sftp().uri(posixpath.join(res.settings.sftp.remote_dir, str(name), folder, file_name)),
        "resume": resume,
        "export": "skipped: resumes the verified archive of failed job " + prev["job_id"] if prev else
                  f"{len(window.split(cfg.streams))} stream(s) from HiveServer2",
        "lock": {"free": holder is None, "holder": holder},
        "keep_local": cfg.keep_local,
        "retention": preview(res, WORKFLOW, str(name)),
    }


DEFINITION = Workflow(
    name=WORKFLOW,
    summary="a table's window as ;-CSV.gz, copied verified to the backup server",
    phases=(Phase("lock", lock_phase), Phase("export", export_phase), Phase("transfer", transfer_phase, queue="io"),
            Phase("cleanup", cleanup_phase), Phase("finish", finish_phase)),
    submit=submit,
    validate=validate_request,
    failure_cleanup=discard_remote_temp,
    plan=plan,
    options=(Option("--months", "months", "window length in calendar months (default from config)", type=int),
             Option("--end", "end", "window end, exclusive, YYYY-MM-DD (default: first day of this month)")),
)
