"""The ``restore-drill`` workflow: prove that the latest backup of each target restores, then throw it away.

    backupctl run restore-drill [WORKFLOW:TARGET]      (default: every target in restore_drill.targets)
    backupctl drills [--json]                          (the latest drill of each target and its age)

Phases (one Celery task each, chained): lock → drill [spark] → finish.

* lock: ``(restore-drill, <target or all>)``: one drill of a target at a time.  Each restore a drill
  runs takes the lock of the backup it restores, as every restore does: a drill never runs beside a
  backup of its target (nor blocks one for longer than that restore).
* drill, per target in turn: the restore workflow of the target's kind (``restore-edge-export``,
  ``restore-table-backup``, ``restore-customer-files``) is submitted as a job of its own, its
  ``latest`` backup into scratch (``restore_drill.scratch_db`` / ``scratch_dir``, named after the
  drill), and its phases run here, in this task, in declared order, exactly as its chain runs them
  (``run_restore``): the drill re-implements no restore and checks no less than a real restore does
  (SHA-256 of the archive or of every file against the backup's record, row counts, per-partition
  counts).  On top, the drill checks what a restore leaves to the operator: table-backup, a sample of
  ``sample_rows`` restored rows is found in the live table (a null-safe anti join); customer-files, every
  restored file is read back from scratch and hashed again.  The scratch table or folder is then
  dropped, pass or fail (only one this drill's restore made: its job id is on the table).
* finish: success if every target passed; otherwise the job fails *without* a job-level alert: each
  failing target alerted already, once per episode of ``(restore-drill, WORKFLOW:TARGET)``, ended by
  that target's next passing drill.

Every result goes into the job record (``outputs.drills``), into the target's drill history
(``<prefix>:drill:history:<WORKFLOW:TARGET>``, a list of the newest ``restore_drill.history``
results) and into ``<prefix>:drill:last`` / ``<prefix>:drill:verified`` (hashes by target: the latest
result; the end time of the latest *passing* drill, which the Prometheus exporter serves as
``backup_last_verified_restore_timestamp_seconds{workflow,target}``).

A restore's own failure is recorded on its job (failed, its failure cleanup run, its lock freed) with
no alert of its own: the drill's is the one.  A drill that finds no successful backup to restore fails
that target (a backup that cannot be found does not restore either).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import uuid

import redis

from base.errors import BackupError, ConnectionFailed, InvalidInput
from base.identifiers import TableName, identifier
from backup.enqueue import fail_request
from backup.jobs import now, phase_entry
from backup.resources import Resources
from backup.runner import PhaseContext, end_unsuccessfully, fail_job, finish_job, phase, take_lock
from backup.workflow import Phase, Workflow, definition

log = logging.getLogger(__name__)

WORKFLOW = "restore-drill"
ALL = "all"
#: backup workflow → the restore workflow a drill of it runs
RESTORES = {"edge-export": "restore-edge-export", "table-backup": "restore-table-backup",
            "customer-files": "restore-customer-files"}
_TARGET = re.compile(r"(edge-export|table-backup|customer-files):(.+)")


# -- the request ---------------------------------------------------------------------------------

def parse_target(text) -> tuple[str, str]:
    """``WORKFLOW:TARGET`` → (backup workflow, its target); InvalidInput naming the problem."""
    m = _TARGET.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise InvalidInput(f"invalid drill target {str(text)[:120]!r}: use edge-export:DB.TABLE, table-backup:DB.TABLE "
                           f"or customer-files:CUSTOMER")
    workflow, target = m.groups()
    if workflow != "customer-files":
        target = str(TableName.parse(target))
    return workflow, target


def validate_request(res: Resources, target: str | None = None) -> list[str]:
    """The targets of a request: the one given, or every configured one; InvalidInput if there are none."""
    if target is None:
        targets = list(res.settings.restore_drill.targets)
        if not targets:
            raise InvalidInput("no drill targets: list them in restore_drill.targets, or name one "
                               "(WORKFLOW:TARGET, e.g. edge-export:mnaas.traffic)")
    else:
        targets = [target]
    out = []
    for t in targets:
        workflow, name = parse_target(t)
        out.append(f"{workflow}:{name}")
    identifier(res.settings.restore_drill.scratch_db, "restore_drill.scratch_db")
    return out


def submit(res: Resources, target: str | None = None, job_id: str | None = None) -> dict:
    """Validate and create the job record (target: the one drilled, or ``all``); a bad request is recorded failed."""
    job_id = job_id or uuid.uuid4().hex
    try:
        targets = validate_request(res, target)
    except InvalidInput as e:
        res.jobs.create(job_id, WORKFLOW, ALL if target is None else str(target)[:120], {"target": target},
                        DEFINITION.phase_names)
        return fail_request(res, job_id, e)
    return res.jobs.create(job_id, WORKFLOW, ALL if target is None else targets[0],
                           {"target": target, "targets": targets}, DEFINITION.phase_names)


# -- lock ----------------------------------------------------------------------------------------

def lock_phase(ctx: PhaseContext) -> dict:
    """Take the (restore-drill, target) lock or end the job as skipped, naming the holder."""
    return take_lock(ctx, WORKFLOW)


# -- drill ---------------------------------------------------------------------------------------

def _tag(drill_job: str, target: str) -> str:
    return hashlib.sha256(f"{drill_job}:{target}".encode()).hexdigest()[:12]


def child_job_id(drill_job: str, target: str) -> str:
    """The id of the restore a drill runs for a target: derived, so a redelivered drill finds its restore again."""
    return f"drill-{hashlib.sha256(f'{drill_job}:{target}'.encode()).hexdigest()[:32]}"


def scratch_table(res: Resources, drill_job: str, target: str) -> TableName:
    """``<scratch_db>.drill_<table>_<tag>``: the table a drill restores into."""
    table = TableName.parse(target).table
    return TableName(res.settings.restore_drill.scratch_db,
                     identifier(f"drill_{table[:60]}_{_tag(drill_job, target)}", "scratch table name"))


def scratch_folder(res: Resources, drill_job: str, target: str) -> str:
    """Where a customer-files drill restores: ``<scratch_dir>/<tag>`` (as a location URL or path)."""
    base = res.settings.restore_drill.scratch_dir
    if "://" in base:
        return f"{base.rstrip('/')}/{_tag(drill_job, target)}"
    return str(res.settings.path(base) / _tag(drill_job, target))


def restore_request(res: Resources, drill_job: str, workflow: str, target: str) -> dict:
    """The restore's request: the latest backup of ``target`` into this drill's scratch."""
    if workflow == "edge-export":
        return {"table": target, "into": str(scratch_table(res, drill_job, target)), "latest": True}
    if workflow == "table-backup":
        return {"table": target, "into": str(scratch_table(res, drill_job, target))}
    return {"customer": target, "location": scratch_folder(res, drill_job, target)}


def run_restore(res: Resources, workflow: str, job_id: str) -> dict:
    """The restore job's phases in this process, in declared order, as its chain runs them (Spark phases
    through ``Resources.spark().run_phase``); a failure is recorded on it as the chain's errback does
    (its failure cleanup run, its lock freed) but without an alert: the drill alerts.  Its final record."""
    wf = definition(workflow)
    for name in wf.phase_names:
        try:
            with phase(res, job_id, name) as ctx:
                if not ctx.active:
                    break
                step = wf.phase(name)
                res.spark().run_phase(step.run, ctx) if step.spark else step.run(ctx)
        except BackupError as e:
            cleanup = wf.failure_cleanup
            fail_job(res, job_id, name, e, cleanup=(lambda r: cleanup(res, r)) if cleanup else None, alert=False)
            break
    return res.jobs.get(job_id)


def _check(name: str, ok: bool, **detail) -> dict:
    return {"check": name, "ok": bool(ok), **detail}


def restore_checks(workflow: str, rec: dict) -> list[dict]:
    """What the restore itself verified, read back from its record (a passed restore checked each of these)."""
    out = rec.get("outputs") or {}
    if workflow == "edge-export":
        return [_check("sha256", out.get("sha256_verified") is True, sha256=out.get("sha256")),
                _check("rows", out.get("rows_restored") == out.get("rows_expected"), expected=out.get("rows_expected"),
                       restored=out.get("rows_restored"))]
    if workflow == "table-backup":
        return [_check("rows", out.get("rows_restored") == out.get("rows_expected"), expected=out.get("rows_expected"),
                       restored=out.get("rows_restored")),
                _check("partition_rows", out.get("partition_rows_restored") == out.get("partition_rows_expected"),
                       partitions=len(out.get("partition_rows_expected") or {}))]
    totals = out.get("totals") or {}
    return [_check("files", totals.get("files", 0) > 0 and not totals.get("failed"), files=totals.get("files"),
                   from_secondary=totals.get("from_secondary"))]


def sample_compare(res: Resources, live: str, restored: str, rows: int) -> dict:
    """``rows`` restored rows, each found in the live table (a null-safe anti join over the live table's columns).

    The sample is read to the client first (``LIMIT``: one small read of the restored table), then
    joined with the live table: one scan of the live table, the sample broadcast to it.
    """
    from pyspark.sql import functions as F

    from connectors.spark import spark_errors

    with res.spark().session() as spark:
        with spark_errors(f"compare a sample of {restored} with {live}"):
            live_df = spark.table(TableName.parse(live).sql)
            cols = live_df.columns
            picked = spark.table(TableName.parse(restored).sql).select(*cols)
            sample_rows = picked.limit(rows).collect()
            if not sample_rows:
                return _check("sample_vs_live", False, sampled=0, missing_in_live=0)
            sample = spark.createDataFrame(sample_rows, schema=picked.schema).alias("s")
            on = [F.col(f"s.`{c}`").eqNullSafe(F.col(f"l.`{c}`")) for c in cols]
            missing = sample.join(live_df.alias("l"), on=on, how="left_anti").count()
    return _check("sample_vs_live", missing == 0, sampled=len(sample_rows), missing_in_live=missing)


def rehash_files(res: Resources, rec: dict) -> dict:
    """Every restored file read back from scratch and hashed: it must be what the backup recorded."""
    from storage.locations import open_location

    files = (rec.get("outputs") or {}).get("files") or []
    backend, base = open_location(res.settings, rec["args"]["location"])
    bad = []
    with backend:
        for f in files:
            path = posixpath.join(base, f["domain"], f["file"])
            if backend.sha256(path) != f["sha256"]:
                bad.append(f"{f['domain']}/{f['file']}")
    return _check("sha256_reread", bool(files) and not bad, files=len(files), mismatched=bad[:10])


def drop_scratch(res: Resources, workflow: str, rec: dict) -> str | None:
    """Drop what the drill's restore made in scratch (a table carrying its job id, or its folder)."""
    if workflow == "customer-files":
        from storage.locations import open_location

        backend, base = open_location(res.settings, rec["args"]["location"])
        with backend:
            if backend.stat(base) is not None:
                backend.delete(base, recursive=True)
        return backend.uri(base)
    return res.spark().run(drop_scratch_table, res, workflow, rec["args"]["into"], rec["job_id"])


def drop_scratch_table(res: Resources, workflow: str, table: str, restore_job: str) -> str | None:
    """Drop ``table`` if the restore ``restore_job`` made it (its property says so); its name, or None."""
    from backup.restore_edge_export import PROP_RESTORED_BY
    from backup.restore_table_backup import PROP_RESTORE_JOB
    from connectors.spark import drop, properties_if_exists

    prop = PROP_RESTORED_BY if workflow == "edge-export" else PROP_RESTORE_JOB
    name = TableName.parse(table)
    with res.spark().session() as spark:
        props = properties_if_exists(spark, name)
        if props is None or props.get(prop) != restore_job:
            return None
        drop(spark, name, "TABLE")
    return str(name)


def drill_one(res: Resources, drill_job: str, target: str) -> dict:
    """One target's drill: restore into scratch, verify, drop the scratch; the result (never raises a
    BackupError of the restore: a failed restore is a failed drill)."""
    workflow, name = parse_target(target)
    restore = RESTORES[workflow]
    child = child_job_id(drill_job, target)
    started = now()
    result = {"target": target, "workflow": workflow, "restore_job": child, "started": started}
    rec = res.jobs.find(child)
    if rec is None:
        rec = definition(restore).submit(res, job_id=child, **restore_request(res, drill_job, workflow, name))
    if rec["state"] not in ("success", "failed", "skipped"):
        rec = run_restore(res, restore, child)
    checks: list[dict] = []
    error = None
    try:
        if rec["state"] == "success":
            checks = restore_checks(workflow, rec)
            if workflow == "table-backup" and res.settings.restore_drill.sample_rows:
                checks.append(sample_compare(res, name, rec["outputs"]["restored_table"],
                                             res.settings.restore_drill.sample_rows))
            if workflow == "customer-files":
                checks.append(rehash_files(res, rec))
            failed = [c["check"] for c in checks if not c["ok"]]
            error = f"check(s) failed: {', '.join(failed)}" if failed else None
        elif rec["state"] == "skipped":
            error = f"restore skipped: {rec.get('reason')}"
        else:
            error = f"restore failed: {rec.get('error')}"
    except BackupError as e:
        error = f"verification failed: {e.one_line()}"
    finally:
        try:
            result["scratch_dropped"] = drop_scratch(res, workflow, rec) if rec.get("args", {}).get(
                "into" if workflow != "customer-files" else "location") else None
        except BackupError as e:  # left for the operator; the drill's own outcome is what matters
            result["scratch_dropped"] = None
            result["scratch_error"] = e.one_line()
            log.warning("drill %s: scratch of %s not dropped: %s", drill_job, target, e.one_line())
    source = (rec.get("args") or {}).get("archive", {}).get("job_id") if workflow == "edge-export" else \
        (rec.get("outputs") or {}).get("backup_job_id")
    result.update(passed=error is None, error=error, checks=checks, backup_job=source, finished=now())
    return result


# -- history, metrics, alerts ----------------------------------------------------------------------

def _key(res: Resources, *parts: str) -> str:
    return ":".join([res.settings.redis.key_prefix, "drill", *parts])


def record_result(res: Resources, drill_job: str, result: dict) -> None:
    """The result into the target's history, the latest-result hash, and (passed) the verified-restore time."""
    target = result["target"]
    entry = json.dumps({**result, "drill_job": drill_job})
    try:
        pipe = res.redis.pipeline()
        pipe.lpush(_key(res, "history", target), entry)
        pipe.ltrim(_key(res, "history", target), 0, res.settings.restore_drill.history - 1)
        pipe.hset(_key(res, "last"), target, entry)
        if result["passed"]:
            pipe.hset(_key(res, "verified"), target, result["finished"])
        pipe.execute()
    except redis.RedisError as e:
        raise ConnectionFailed(f"record drill of {target}: {e}") from e


def alert_or_clear(res: Resources, drill_job: str, result: dict) -> dict | None:
    """A failed drill alerts once per episode of (restore-drill, target); a passing one ends the episode."""
    if result["passed"]:
        res.alerter.success(WORKFLOW, result["target"])
        return None
    return res.alerter.failure({"workflow": WORKFLOW, "target": result["target"], "job_id": drill_job,
                                "phase": "drill"}, result["error"])


def last_results(res: Resources) -> dict[str, dict]:
    """Target → its latest drill result (``backupctl drills``)."""
    try:
        raw = res.redis.hgetall(_key(res, "last"))
    except redis.RedisError as e:
        raise ConnectionFailed(f"read drill results: {e}") from e
    return {k.decode(): json.loads(v) for k, v in sorted(raw.items())}


def history(res: Resources, target: str) -> list[dict]:
    """A target's drill results, newest first."""
    try:
        return [json.loads(v) for v in res.redis.lrange(_key(res, "history", target), 0, -1)]
    except redis.RedisError as e:
        raise ConnectionFailed(f"read drill history of {target}: {e}") from e


def verified_restores(client: redis.Redis, prefix: str) -> dict[tuple[str, str], float]:
    """(workflow, target) → end time of its latest passing drill (the Prometheus exporter reads it)."""
    out = {}
    for k, v in client.hgetall(f"{prefix}:drill:verified").items():
        workflow, _, target = k.decode().partition(":")
        out[(workflow, target)] = float(v)
    return out


def drill_phase(ctx: PhaseContext) -> dict:
    """Each target's drill in turn; each result recorded as soon as it is known (a redelivery skips the done ones)."""
    res, rec = ctx.res, ctx.rec
    done = dict((rec.get("outputs") or {}).get("drills") or {})
    for target in rec["args"]["targets"]:
        if target in done:
            continue
        result = drill_one(res, ctx.job_id, target)
        result["alert"] = alert_or_clear(res, ctx.job_id, result)
        record_result(res, ctx.job_id, result)
        done[target] = result
        ctx.commit_check()
        res.jobs.update(ctx.job_id, lambda r: r["outputs"].setdefault("drills", {}).update({target: result}),
                        fence=ctx.held)
        log.info("drill of %s %s%s", target, "passed" if result["passed"] else "FAILED",
                 "" if result["passed"] else f": {result['error']}")
    passed = sum(r["passed"] for r in done.values())
    ctx.done({"passed": passed, "failed": len(done) - passed},
             note=f"{passed} of {len(done)} target(s) passed", state="success")
    return {"job_id": ctx.job_id, "passed": passed, "failed": len(done) - passed}


# -- finish --------------------------------------------------------------------------------------

def finish_phase(ctx: PhaseContext) -> dict:
    """Success if every target passed; else failed, without a job-level alert (each target alerted once)."""
    drills = (ctx.rec.get("outputs") or {}).get("drills") or {}
    failed = {t: r["error"] for t, r in drills.items() if not r["passed"]}
    if not failed:
        rec = finish_job(ctx)
        return {"job_id": ctx.job_id, "state": rec["state"]}
    if ctx.renewer:
        ctx.renewer.stop()
        ctx.renewer = None
    error = f"{len(failed)} of {len(drills)} drill(s) failed: " + "; ".join(f"{t}: {e}" for t, e in failed.items())

    def change(rec):
        phase_entry(rec, ctx.name).update(state="success", finished=now())
        rec.update(state="failed", error=error, finished=now())
    rec = end_unsuccessfully(ctx.res, ctx.rec, change, error, fence=ctx.held, release=ctx.held, alert=False)
    return {"job_id": ctx.job_id, "state": rec["state"], "error": error}


DEFINITION = Workflow(
    name=WORKFLOW,
    summary="each target's latest backup restored into scratch, verified, dropped; results kept as drill history",
    phases=(Phase("lock", lock_phase), Phase("drill", drill_phase, queue="spark"), Phase("finish", finish_phase)),
    submit=submit,
    validate=validate_request,
    target_argument="target",
    target_required=False,
    target_help="[WORKFLOW:TARGET] (default: every target in restore_drill.targets)",
)
