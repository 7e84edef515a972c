"""The ``retention`` workflow: delete the backups a target no longer keeps, and only what its runs recorded.

    backupctl retention edge-export DB.TABLE [--dry-run]
    backupctl retention customer-files [all] [--dry-run]

Phases (one Celery task each, chained): lock → plan → delete [io] → finish.

lock     the lock of the backup itself, (edge-export, DB.TABLE) or (customer-files, all): retention never runs
         beside a backup of the target, nor beside a restore, which takes the same lock; so nothing a running
         restore reads is ever deleted.
plan     reads the backup's job records of the target (``JobStore.history``: 90 days of records) and decides per
         run with the rule of ``retention.<workflow>`` (``config.settings.RetentionWorkflowSettings.rule``):
         ``decide`` below.  What each run created comes from its own record only (``artifacts``): edge-export's
         archive on the backup server (``remote_uri``) and its local archive (``local_path``, left by a failed
         run for resume, or by ``keep_local``); customer-files' manifest (``manifest``) and, with
         ``delete_copies``, the primary and secondary copies its manifest lists as ``copied`` by it.  A run
         whose archive a queued restore already chose (``restoring``) is kept too.  Nothing is
         ever found by listing or globbing a folder: a file the runs did not record (a foreign file) is never
         seen, so never deleted.  The plan (every run, kept or not and why; every file to delete) goes into
         the job record.
delete   (skipped by ``dry_run``) deletes each planned file, checking first that it is still the file the run
         recorded (its size; a changed file is left and reported), records every deletion in the job record
         (``deleted``) as it goes (at least once a second), marks each expired backup run's record (``retention_deleted``: restores
         and later retention runs skip it), then removes each run's folder only if it is empty (``rmdir``,
         never recursive: a folder holding a foreign file stays).
finish   success recorded, lock released.

Costs: one pass over the job index (pipelined, a page of 500 records per round trip), one ``stat`` and one
delete per file, a fenced record write at most once a second while deleting.  With ``delete_copies`` each
expired manifest is read once.

table-backup is not covered here: its versions are Hive tables, expired by each versioned backup run itself
(``backup.table_backup.catalog.expire_versions``) keeping ``retention.table_backup.keep_runs`` of the table
(default ``table_backup.retention``), so one setting decides both.
"""

from __future__ import annotations

import csv
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from base.errors import BackupError, ConfigError, InvalidInput
from base.identifiers import TableName
from base.text import CONTROL_CHARS, run_id
from backup.enqueue import fail_request
from backup.jobs import now
from backup.outputs import PhaseOutputs
from backup.resources import Resources
from backup.runner import PhaseContext, finish_job, take_lock
from backup.workflow import Option, Phase, Workflow
from config.settings import RETENTION_WORKFLOWS, RetentionRule

log = logging.getLogger(__name__)

WORKFLOW = "retention"
#: the workflows ``backupctl retention`` deletes for (table-backup expires its versions itself, see above)
COVERED = ("edge-export", "customer-files")
CUSTOMER_FILES_TARGET = "all"
DAY = 86400.0
#: key a backup run's record gets once retention deleted what it created
DELETED_MARK = "retention_deleted"
#: kept runs listed in a retention job's record (every expired run is listed)
LISTED_KEPT = 100
#: the deletions are written to the job record at least this often (seconds), and at the end
RECORD_EVERY = 1.0


# -- the request -----------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """A validated request: whose backups, which target, and whether to delete or only list."""

    workflow: str
    target: str
    dry_run: bool
    rule: RetentionRule

    @property
    def record_target(self) -> str:
        """The retention job's own target: ``edge-export:db.table``."""
        return f"{self.workflow}:{self.target}"


def rule_problem(rule: RetentionRule) -> str | None:
    """Why a rule deletes nothing (neither a count nor an age), or None."""
    if rule.keep_runs is None and rule.keep_days is None:
        return "has neither keep_runs nor keep_days"
    return None


def validate_request(res: Resources, workflow: str, target: str | None = None, dry_run=False) -> Request:
    """Check a request without touching any storage; InvalidInput naming the problem."""
    if workflow == "table-backup":
        raise InvalidInput("table-backup versions are expired by each versioned backup run itself, keeping "
                           "retention.table_backup.keep_runs (default table_backup.retention); retention covers "
                           f"{' and '.join(COVERED)}")
    if not isinstance(workflow, str) or workflow not in COVERED:
        raise InvalidInput(f"retention of {str(workflow)[:80]!r}: unknown backup workflow (retention covers "
                           f"{', '.join(COVERED)})")
    if not isinstance(dry_run, bool):
        raise InvalidInput(f"dry_run must be true or false, got {str(dry_run)[:40]!r}")
    if workflow == "customer-files":
        if target not in (None, CUSTOMER_FILES_TARGET):
            raise InvalidInput(f"customer-files has one target, {CUSTOMER_FILES_TARGET!r} (every customer), "
                               f"not {str(target)[:80]!r}")
        target = CUSTOMER_FILES_TARGET
        if res.settings.customer_files is None:
            raise InvalidInput("customer_files: section missing from the config; there is nothing to keep")
    else:
        if target is None or target == "":
            raise InvalidInput("retention of edge-export needs a target DB.TABLE")
        target = str(TableName.parse(target))
    rule = res.settings.retention.of(workflow).rule(target)
    problem = rule_problem(rule)
    if problem:
        key = workflow.replace("-", "_")
        raise InvalidInput(f"no retention rule for {workflow} {target}: retention.{key} {problem} (set "
                           f"retention.{key}.keep_runs or keep_days, or an entry under retention.{key}.targets)")
    return Request(workflow, target, dry_run, rule)


def submit(res: Resources, workflow: str, target: str | None = None, dry_run: bool = False,
           job_id: str | None = None) -> dict:
    """Validate and create the job record; a bad request is recorded failed and starts nothing."""
    job_id = job_id or uuid.uuid4().hex
    args = {"workflow": workflow, "target": target, "dry_run": dry_run}
    try:
        req = validate_request(res, workflow, target, dry_run)
    except (InvalidInput, ConfigError) as e:
        label = CONTROL_CHARS.sub("?", f"{workflow}:{target}")[:120]
        res.jobs.create(job_id, WORKFLOW, label, args, DEFINITION.phase_names)
        return fail_request(res, job_id, e)
    args.update(target=req.target, rule=req.rule.model_dump())
    return res.jobs.create(job_id, WORKFLOW, req.record_target, args, DEFINITION.phase_names)


def _request(rec: dict) -> Request:
    a = rec["args"]
    return Request(a["workflow"], a["target"], bool(a["dry_run"]), RetentionRule(**a["rule"]))


# -- deciding which runs go --------------------------------------------------------

@dataclass
class Run:
    """One backup run as retention sees it: when, how it ended, what its record says it created."""

    job_id: str
    created: float
    state: str
    artifacts: list[dict] = field(default_factory=list)
    #: what its record names that retention leaves alone (outside its run's folder ...): the run is never marked
    problems: list[str] = field(default_factory=list)


def decide(runs: list[Run], rule: RetentionRule, at: float, latest_job: str | None = None,
           restoring: dict[str, str] | None = None) -> dict[str, str]:
    """job id → why the run is kept (``keep: ...``) or goes (``expired: ...``).  Pure; ``at`` is the time now.

    Successful runs, newest first: kept if among the newest ``keep_runs``, or younger than ``keep_days``,
    and the newest one always.  A failed run only left things behind (a local archive kept for resume, a
    manifest): kept while younger than ``keep_days``, while newer than the oldest kept successful run, or
    if it is the target's latest run (``latest_job``: what the next run would resume from).  A run that a
    queued or running restore chose (``restoring``: backup job id → restore job id) is always kept.
    """
    ok = sorted((r for r in runs if r.state == "success"), key=lambda r: r.created, reverse=True)
    others = [r for r in runs if r.state != "success"]
    young_since = at - rule.keep_days * DAY if rule.keep_days is not None else None
    verdict: dict[str, str] = {}
    for i, r in enumerate(ok):
        if i == 0:
            verdict[r.job_id] = "keep: the newest successful run"
        elif rule.keep_runs is not None and i < rule.keep_runs:
            verdict[r.job_id] = f"keep: among the newest {rule.keep_runs} successful runs"
        elif young_since is not None and r.created >= young_since:
            verdict[r.job_id] = f"keep: younger than {rule.keep_days} days"
        else:
            why = [f"older than {rule.keep_days} days"] if young_since is not None else []
            why += [f"beyond the newest {rule.keep_runs} successful runs"] if rule.keep_runs is not None else []
            verdict[r.job_id] = "expired: " + " and ".join(why)
    kept = [r.created for r in ok if verdict[r.job_id].startswith("keep")]
    oldest_kept = min(kept) if kept else None
    for r in others:
        if r.job_id == latest_job:
            verdict[r.job_id] = f"keep: the latest run ({r.state}), a next run may resume from it"
        elif young_since is not None and r.created >= young_since:
            verdict[r.job_id] = f"keep: {r.state}, younger than {rule.keep_days} days"
        elif oldest_kept is None or r.created > oldest_kept:
            verdict[r.job_id] = f"keep: {r.state}, newer than the oldest kept successful run"
        else:
            verdict[r.job_id] = f"expired: {r.state}, older than every kept successful run"
    # last: a run a restore reads is kept, without keeping older failed runs along with it
    for job, restore in (restoring or {}).items():
        if job in verdict:
            verdict[job] = f"keep: restore job {restore} reads it"
    return verdict


def to_delete(runs: list[Run], verdict: dict[str, str]) -> list[dict]:
    """The artifacts to delete: those whose every naming run is expired (a resumed archive is named by the
    failed run that exported it and the run that delivered it; a customer file's copy by the run that copied
    it and, as a reference, by the later runs that found it present), once each, in run order, with the runs."""
    by_key: dict[tuple, dict] = {}
    keep: set[tuple] = set()
    for r in sorted(runs, key=lambda r: r.created):
        for a in r.artifacts:
            key = (a["kind"], a["path"])
            if verdict[r.job_id].startswith("keep"):
                keep.add(key)
            if not a.get("reference"):  # a copy an earlier run made: kept if a kept run names it, never deleted here
                by_key.setdefault(key, {**a, "runs": []})["runs"].append(r.job_id)
    return [a for key, a in by_key.items() if key not in keep]


# -- what a run's record says it created ------------------------------------------

_ARCHIVE = re.compile(r"[A-Za-z0-9_]+\.[A-Za-z0-9_]+_[0-9]{8}-[0-9]{8}\.csv\.gz")
_MANIFEST = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{1,8}\.csv")


def _under(path: str, root: str) -> bool:
    """``path`` is a normalized absolute path strictly below ``root`` (no ``..``, no control characters)."""
    return (path.startswith("/") and not CONTROL_CHARS.search(path) and ".." not in path.split("/")
            and posixpath.normpath(path) == path and path.startswith(root.rstrip("/") + "/"))


def edge_export_artifacts(res: Resources, rec: dict) -> tuple[list[dict], list[str]]:
    """(artifacts, problems) of an edge-export record: its archive on the backup server and its local archive.

    Only a path inside the run's own folder, ``<root>/<table>/<run id>/<archive name>``, with the run id
    the exporting run's: a record never names what is deleted outside the table's folder.
    """
    out = rec.get("outputs") or {}
    found, problems = [], []
    run = out.get("run_id")
    if not isinstance(run, str) or not re.fullmatch(r"[0-9]{8}T[0-9]{6}Z-[0-9A-Za-z]{1,8}", run):
        return found, problems  # never exported: nothing was created
    size = out.get("bytes") if isinstance(out.get("bytes"), int) else None
    remote_root = posixpath.join(res.settings.sftp.remote_dir, rec["target"], run)
    uri = out.get("remote_uri")
    if isinstance(uri, str) and uri:
        path = urlsplit(uri).path if uri.startswith("sftp://") else ""
        if _under(path, remote_root) and posixpath.dirname(path) == remote_root \
                and _ARCHIVE.fullmatch(posixpath.basename(path)):
            found.append({"kind": "remote", "path": path, "uri": uri, "bytes": size})
        else:
            problems.append(f"job {rec['job_id']}: remote_uri {uri[:200]!r} is not an archive in its run's folder "
                            f"{remote_root}; left alone")
    local = out.get("local_path")
    # A successful run's cleanup deleted its local archive unless it says it kept it (keep_local).
    if isinstance(local, str) and local and (rec.get("state") != "success" or out.get("local_kept")):
        local_root = os.path.normpath(str(res.settings.path(res.settings.edge_export.export_dir) / rec["target"] / run))
        if _under(local, local_root) and posixpath.dirname(local) == local_root \
                and _ARCHIVE.fullmatch(posixpath.basename(local)):
            found.append({"kind": "local", "path": local, "uri": Path(local).as_uri(), "bytes": size})
        else:
            problems.append(f"job {rec['job_id']}: local_path {local[:200]!r} is not an archive in its run's folder "
                            f"{local_root}; left alone")
    return found, problems


def customer_files_artifacts(res: Resources, rec: dict, with_copies: bool) -> tuple[list[dict], list[str]]:
    """(artifacts, problems) of a customer-files record: its manifest and, ``with_copies``, the copies the
    manifest lists as ``copied`` by this run (a ``present`` row was copied by an earlier run, not this one)."""
    out = rec.get("outputs") or {}
    manifest = out.get("manifest")
    if not isinstance(manifest, str) or not manifest:
        return [], []
    root = os.path.normpath(str(res.settings.path(res.settings.customer_files.manifest_dir)))
    name = f"{run_id(rec['created'], rec['job_id'])}.csv"
    if manifest != posixpath.join(root, name):
        return [], [f"job {rec['job_id']}: manifest {manifest[:200]!r} is not {name} in customer_files.manifest_dir "
                    f"{root}; left alone"]
    found = [{"kind": "manifest", "path": manifest, "uri": Path(manifest).as_uri(), "bytes": None}]
    problems: list[str] = []
    if with_copies:
        copies, problems = _copies(res, manifest, rec["job_id"])
        found += copies
    return found, problems


def _safe_part(part) -> bool:
    return isinstance(part, str) and part not in ("", ".", "..") and "/" not in part and not CONTROL_CHARS.search(part)


def _copies(res: Resources, manifest: str, job_id: str) -> tuple[list[dict], list[str]]:
    """The copies a manifest names, each checked to be exactly ``<customer's location>/<domain>/<file>`` as its
    backend spells it: ``copied`` rows are this run's to delete, ``present`` rows only references (the copy
    was made by an earlier run; a kept run that names it keeps it)."""
    from storage.locations import open_location

    cfg = res.settings.customer_files
    found, problems = [], []
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return [], [f"job {job_id}: manifest {manifest} is gone; its copies are left alone"]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return [], [f"job {job_id}: manifest {manifest} unreadable ({type(e).__name__}); its copies are left alone"]
    with ExitStack() as stack:
        opened: dict[str, tuple] = {}
        for row in rows:
            if row.get("status") not in ("copied", "present") or row.get("customer") not in cfg.customers:
                continue
            if not (_safe_part(row.get("domain")) and _safe_part(row.get("file"))):
                problems.append(f"job {job_id}: manifest row {str(row.get('file'))[:100]!r} names no file in a "
                                f"domain folder; left alone")
                continue
            for role in ("primary", "secondary"):
                uri = row.get(f"{role}_uri") or ""
                if not uri:
                    continue
                location = getattr(cfg.customers[row["customer"]], role)
                if location is None:
                    problems.append(f"job {job_id}: {role} copy {uri[:200]!r}: customer {row['customer']} has no "
                                    f"{role} configured now; left alone")
                    continue
                if location not in opened:
                    backend, base = open_location(res.settings, location)
                    opened[location] = (stack.enter_context(backend), base)
                backend, base = opened[location]
                relative = f"{row['domain']}/{row['file']}"
                if uri != backend.uri(posixpath.join(base, relative)):
                    problems.append(f"job {job_id}: {role} copy {uri[:200]!r} is not {relative} in {location}; "
                                    f"left alone")
                    continue
                size = int(row["bytes"]) if str(row.get("bytes") or "").isdigit() else None
                found.append({"kind": role, "path": uri, "uri": uri, "bytes": size, "location": location,
                              "relative": relative, "reference": row["status"] != "copied"})
    return found, problems


def runs_of(res: Resources, req: Request) -> tuple[list[Run], str | None, list[str]]:
    """(the runs with their artifacts, the target's latest run's job id, problems found in the records)."""
    runs, problems, latest = [], [], None
    for rec in res.jobs.history(req.workflow, req.target):
        latest = latest or rec["job_id"]
        if rec.get("state") not in ("success", "failed") or (rec.get("outputs") or {}).get(DELETED_MARK):
            continue
        if req.workflow == "edge-export":
            found, bad = edge_export_artifacts(res, rec)
        else:
            found, bad = customer_files_artifacts(res, rec, res.settings.retention.customer_files.delete_copies)
        problems += bad
        runs.append(Run(rec["job_id"], float(rec["created"]), rec["state"], found, bad))
    return runs, latest, problems


def restoring(res: Resources, req: Request) -> dict[str, str]:
    """Backup job id → the queued or running restore-edge-export job that chose its archive.

    A restore chooses its archive when it is submitted and takes the lock only when its first phase
    runs; between the two, the lock does not protect the archive, this does.  (A customer-files
    restore chooses its files under the lock, so the lock alone protects it.)
    """
    if req.workflow != "edge-export":
        return {}
    found = {}
    for rec in res.jobs.active():
        args = rec.get("args") or {}
        archive = args.get("archive")
        if rec.get("workflow") == "restore-edge-export" and args.get("table") == req.target \
                and isinstance(archive, dict) and isinstance(archive.get("job_id"), str):
            found[archive["job_id"]] = rec["job_id"]
    return found


# -- outputs handed on through the job record -----------------------------------

@dataclass(frozen=True)
class Planned(PhaseOutputs):
    """plan → delete, and the reader: the runs considered (job_id, created, state, verdict, artifacts):
    every expired one and the newest ``LISTED_KEPT`` kept ones (``kept_runs`` counts them all), the files to delete (kind, path, uri, bytes, runs), the rule and the time it was applied at, and
    what in the records was left alone (``problems``)."""

    written_by: ClassVar[str] = "plan"
    runs: list
    delete: list
    rule: dict
    applied_at: float
    problems: list
    kept_runs: int = 0


@dataclass(frozen=True)
class Deleted(PhaseOutputs):
    """delete → the reader: every file deleted (uri, kind, bytes, runs, at), those already gone, those left
    because they changed since their run recorded them, and the run folders removed or left (not empty)."""

    written_by: ClassVar[str] = "delete"
    deleted: list
    gone: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    folders: dict = field(default_factory=dict)
    dry_run: bool = False


# -- phases ------------------------------------------------------------------------

def lock_phase(ctx: PhaseContext) -> dict:
    """Take the backup's own lock (workflow, target), as its restores do, or end the job as skipped."""
    a = ctx.rec["args"]
    return take_lock(ctx, a["workflow"], a["target"])


def plan_phase(ctx: PhaseContext) -> dict:
    """Decide per run from its record and the rule; record every run's verdict and the files to delete."""
    req = _request(ctx.rec)
    runs, latest, problems = runs_of(ctx.res, req)
    at = time.time()
    verdict = decide(runs, req.rule, at, latest, restoring(ctx.res, req))
    going = to_delete(runs, verdict)
    listed, kept = [], 0
    for r in sorted(runs, key=lambda r: -r.created):
        kept += verdict[r.job_id].startswith("keep")
        if verdict[r.job_id].startswith("keep") and kept > LISTED_KEPT:
            continue  # the record stays small: every expired run, the newest kept ones
        listed.append({"job_id": r.job_id, "created": r.created, "state": r.state, "verdict": verdict[r.job_id],
                       "artifacts": [a["uri"] for a in r.artifacts if not a.get("reference")],
                       "left_alone": len(r.problems)})
    expired = len(runs) - kept
    ctx.done(Planned(runs=listed, delete=going, rule=req.rule.model_dump(), applied_at=at,
                     problems=problems, kept_runs=kept).as_outputs(),
             note=f"{len(runs)} run(s): {expired} expired, {len(going)} file(s) to delete"
                  + (" (dry run: nothing will be deleted)" if req.dry_run else ""))
    return {"job_id": ctx.job_id, "runs": len(runs), "expired": expired, "files": len(going)}


def preview(res: Resources, workflow: str, target: str | None) -> dict | str:
    """What a retention run of ``target`` would delete now, read-only (``backupctl plan`` shows it): the plan
    phase's own decision (``runs_of``, ``decide``, ``to_delete``), nothing recorded, nothing deleted; a
    sentence saying so when the target has no rule."""
    try:
        req = validate_request(res, workflow, target, dry_run=True)
    except (InvalidInput, ConfigError) as e:
        return "not configured: " + " ".join(str(e).split())
    runs, latest, problems = runs_of(res, req)
    verdict = decide(runs, req.rule, time.time(), latest, restoring(res, req))
    going = to_delete(runs, verdict)
    return {"rule": req.rule.model_dump(), "runs": len(runs),
            "expired_runs": sorted(j for j, v in verdict.items() if not v.startswith("keep")),
            "files": [a["uri"] for a in going], "left_alone": len(problems),
            "when": "now, before this run; the retention enqueued after a successful run decides again with it"}


class _Remover:
    """Deletes one kind of artifact: ``size(path)`` (None: gone), ``remove(path)``, ``rmdir(folder)`` → emptied."""

    def __init__(self, size: Callable[[str], int | None], remove: Callable[[str], None],
                 rmdir: Callable[[str], bool]):
        self.size, self.remove, self.rmdir = size, remove, rmdir


def _local_remover() -> _Remover:
    def size(path: str) -> int | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return st.st_size if os.path.isfile(path) and not os.path.islink(path) else -1

    def rmdir(folder: str) -> bool:
        try:
            os.rmdir(folder)  # never recursive: a folder holding anything else stays
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False
    return _Remover(size, lambda p: os.unlink(p), rmdir)


def _sftp_remover(sess) -> _Remover:
    import stat as stat_mod

    def size(path: str) -> int | None:
        st = sess.stat(path)
        if st is None:
            return None
        return st.st_size if stat_mod.S_ISREG(st.st_mode) else -1
    return _Remover(size, sess.remove, sess.rmdir_if_empty)


def _storage_remover(backend) -> _Remover:
    def size(path: str) -> int | None:
        found = backend.stat(path)
        return None if found is None else (-1 if found.is_dir else found.size)

    def rmdir(folder: str) -> bool:
        return False  # a customer's domain folder is the backup's layout, shared by every run: never removed
    return _Remover(size, backend.delete, rmdir)


def delete_phase(ctx: PhaseContext) -> dict:
    """Delete the planned files (each still the recorded size), record each, mark the expired runs, then
    remove the emptied run folders; a dry run deletes nothing."""
    res, req = ctx.res, _request(ctx.rec)
    plan = Planned.read(ctx.rec)
    if req.dry_run:
        ctx.done(Deleted(deleted=[], dry_run=True).as_outputs(),
                 note=f"dry run: {len(plan.delete)} file(s) would be deleted, none was")
        return {"job_id": ctx.job_id, "deleted": 0, "dry_run": True}
    done = Deleted.find(ctx.rec) or Deleted(deleted=[])  # a redelivery goes on from what is recorded
    result = {"deleted": list(done.deleted), "gone": list(done.gone), "changed": list(done.changed),
              "folders": dict(done.folders)}
    handled = {d["uri"] for key in ("deleted", "gone", "changed") for d in result[key]}

    last_write = [0.0]

    def record(force: bool = True) -> None:
        if not force and time.monotonic() - last_write[0] < RECORD_EVERY:
            return
        last_write[0] = time.monotonic()

        def change(rec):
            rec["outputs"].update(Deleted(**result).as_outputs())
        ctx.rec = res.jobs.update(ctx.job_id, change, fence=ctx.held)

    with ExitStack() as stack:
        removers: dict[str, tuple[_Remover, Callable[[dict], str]]] = {}

        def remover(a: dict) -> tuple[_Remover, Callable[[dict], str]]:
            kind = a["kind"]
            if kind in ("local", "manifest"):
                return _local_remover(), lambda a: a["path"]
            if kind == "remote":
                if "remote" not in removers:
                    removers["remote"] = (_sftp_remover(stack.enter_context(res.sftp().connect())),
                                          lambda a: a["path"])
                return removers["remote"]
            key = f"{kind}:{a['location']}"
            if key not in removers:
                from storage.locations import open_location

                backend, base = open_location(res.settings, a["location"])
                stack.enter_context(backend)
                removers[key] = (_storage_remover(backend), lambda a, base=base: posixpath.join(base, a["relative"]))
            return removers[key]

        folders: dict[str, _Remover] = {}
        for a in plan.delete:
            rm, path_of = remover(a)
            path = path_of(a)
            if a["kind"] in ("remote", "local"):
                folders[posixpath.dirname(path)] = rm
            if a["uri"] in handled:  # deleted (or found gone, changed) by an earlier delivery of this phase
                continue
            entry = {"uri": a["uri"], "kind": a["kind"], "bytes": a.get("bytes"), "runs": a["runs"], "at": now()}
            size = rm.size(path)
            if size is None:
                result["gone"].append(entry)
            elif size < 0 or (a.get("bytes") is not None and size != a["bytes"]):
                entry["found_bytes"] = size
                result["changed"].append(entry)
            else:
                ctx.commit_check()  # the lock is still ours: no backup or restore of the target runs now
                rm.remove(path)
                result["deleted"].append(entry)
            # The plan already names every file before any goes; deletions are written at least once a second
            # (a record rewritten per file would cost O(files²) bytes), and a redelivery finds the rest gone.
            record(force=False)
        for folder, rm in folders.items():
            result["folders"][folder] = "removed" if rm.rmdir(folder) else "left (not empty)"
        record()
    _mark_runs(res, ctx.job_id, plan, result)
    ctx.done(note=f"{len(result['deleted'])} file(s) deleted, {len(result['gone'])} already gone, "
                  f"{len(result['changed'])} changed since recorded (left)")
    return {"job_id": ctx.job_id, "deleted": len(result["deleted"]), "gone": len(result["gone"]),
            "changed": len(result["changed"])}


def _mark_runs(res: Resources, job_id: str, plan: Planned, result: dict) -> None:
    """Mark each expired run whose files are all deleted or gone (none changed, none left alone): restores and
    later retention runs skip it."""
    left = {d["uri"] for d in result["changed"]}
    for run in plan.runs:
        if not run["verdict"].startswith("expired") or run.get("left_alone") or \
                any(uri in left for uri in run["artifacts"]):
            continue
        mark = {"by": job_id, "at": now(), "files": run["artifacts"]}

        def change(rec, mark=mark):
            rec["outputs"][DELETED_MARK] = mark
        try:
            res.jobs.update(run["job_id"], change)
        except BackupError as e:  # the record may have expired meanwhile; its files are gone either way
            log.warning("could not mark job %s as deleted by retention: %s", run["job_id"], e.one_line())


def finish_phase(ctx: PhaseContext) -> dict:
    """Record success and release the lock."""
    rec = finish_job(ctx)
    out = rec.get("outputs") or {}
    return {"job_id": ctx.job_id, "state": rec["state"], "deleted": len(out.get("deleted") or [])}


# -- after a backup ------------------------------------------------------------------

def after_backup_request(res: Resources, rec: dict) -> dict | None:
    """The retention request to enqueue after a backup run ``rec`` succeeded, or None (no rule, not covered)."""
    if rec.get("state") != "success" or rec.get("workflow") not in COVERED or rec["workflow"] not in \
            RETENTION_WORKFLOWS:
        return None
    if rule_problem(res.settings.retention.of(rec["workflow"]).rule(rec["target"])):
        return None
    return {"workflow": rec["workflow"], "target": rec["target"], "dry_run": False,
            "idempotency_key": f"after-{rec['job_id']}"}


DEFINITION = Workflow(
    name=WORKFLOW,
    summary="delete the runs a backup target no longer keeps (retention rules), only the files their records name",
    phases=(Phase("lock", lock_phase), Phase("plan", plan_phase), Phase("delete", delete_phase, queue="io"),
            Phase("finish", finish_phase)),
    submit=submit,
    validate=validate_request,
    target_argument="target",
    target_help="DB.TABLE (edge-export) or all (customer-files)",
    options=(Option("--dry-run", "dry_run", "list what would be deleted (in the job record) and delete nothing",
                    flag_only=True),),
    verb="retention",
    kind_argument="workflow",
    kinds=COVERED,
)
