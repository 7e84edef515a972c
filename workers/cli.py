"""``backupctl``: run, watch and operate the backup workflows.

    backupctl platform up|down|status
    backupctl worker [-Q io,default] [-c N]        (same as: celery -A workers.app worker)
    backupctl run WORKFLOW [TARGET] [options] [--wait] [--json]   (workflows and their options: backupctl run -h)
    backupctl run edge-export DB.TABLE [--months N] [--end DATE]
    backupctl run table-backup DB.TABLE --source PATH [--suffix S] [--versioned [--retention N] [--day DATE]]
    backupctl run customer-files                    (every configured customer; --wait: a bar per customer)
    backupctl retention edge-export DB.TABLE [--dry-run]   (and customer-files; docs/retention.md)
    backupctl plan WORKFLOW [TARGET] [options] [--json]   (what a run would do; writes nothing. Also: run --plan)
    backupctl drills [--json]                       (the latest restore drill of each target, and its age)
    backupctl status JOB_ID [--json]
    backupctl jobs [--limit N]
    backupctl sample-data DB.TABLE [--rows N]
    backupctl schedule [--count N] [--json]         (what beat fires next, and when)
    backupctl beat [--check]                        (celery beat with the Redis lock: one active beat)
    backupctl flower [--address A] [--port P]       (Flower; login from FLOWER_BASIC_AUTH or OAuth)
    backupctl metrics [--address A] [--port P]      (Prometheus exporter of the backup counters)

Errors are one line on stderr with a non-zero exit; no tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

from base.errors import BackupError

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def _settings(args):
    from config.settings import load_settings

    if args.config:
        os.environ["BACKUP_CONFIG"] = os.path.abspath(args.config)
    return load_settings(args.config)


def _resources(args):
    from backup.resources import Resources

    return Resources(_settings(args))


# -- platform ------------------------------------------------------------------

def cmd_platform(args) -> int:
    from local_platform.services import LocalPlatform

    plat = LocalPlatform(_settings(args))
    only = args.only.split(",") if args.only else None
    if args.action == "up":
        report = plat.up(only)
    elif args.action == "down":
        report = plat.down(only)
    else:
        report = plat.status()
        if not args.json:
            for name, info in report.items():
                if "ports" not in info:
                    continue
                ports = " ".join(f"{port}:{'up' if up else 'down'}" for port, up in info["ports"].items())
                where = {k: v for k, v in info.items() if k not in ("pid", "ports")}
                print(f"{name:10} pid {str(info['pid'] or '-'):>7}  {ports}  {json.dumps(where) if where else ''}")
            return EXIT_OK
    print(json.dumps(report, indent=2, default=str))
    return EXIT_OK


def cmd_worker(args) -> int:
    settings = _settings(args)
    from workers.app import app

    argv = ["worker", "--loglevel", args.loglevel, "-Q", args.queues, "-E",
            "-c", str(args.concurrency or settings.celery.worker_concurrency)]
    if args.hostname:
        argv += ["-n", args.hostname]
    app.worker_main(argv)
    return EXIT_OK


# -- run / status / jobs -------------------------------------------------------

def _request(wf, args) -> dict:
    """The request of ``backupctl run|plan WORKFLOW [TARGET] [options]``; InvalidInput for a missing or extra target."""
    from base.errors import InvalidInput

    # With kinds, validate knows which need a target; a workflow whose target is optional covers all without one.
    if wf.target_argument and wf.target_required and not args.target and not wf.kinds:
        raise InvalidInput(f"{wf.name} needs a target {wf.target_help}")
    if not wf.target_argument and args.target not in (None, wf.fixed_target):
        raise InvalidInput(f"{wf.name} always covers {wf.target_help}: give no target or {wf.fixed_target!r}")
    return wf.request_from_cli(args.target, vars(args), getattr(args, "kind", None))


def cmd_run(args) -> int:
    from backup.workflow import definition

    wf = definition(args.workflow)
    if getattr(args, "plan", False):
        return cmd_plan(args)
    res = _resources(args)
    from workers.app import app

    request = _request(wf, args)
    wf.validate(res, **request)  # fail here, before enqueueing
    job_id = uuid.uuid4().hex
    app.send_task(wf.task, kwargs=request, task_id=job_id)
    if not args.wait:
        print(json.dumps({"job_id": job_id, "state": "queued"}) if args.json else job_id)
        return EXIT_OK
    rec = wait_for(res, job_id, show=not args.json, timeout=args.timeout)
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        print(summary(rec))
    return EXIT_OK if rec["state"] == "success" else EXIT_FAILED


def _bar(done: float, total: float | None, width: int = 24) -> str:
    if not total:
        return ""
    frac = max(0.0, min(1.0, done / total))
    return "[" + "#" * int(frac * width) + "." * (width - int(frac * width)) + f"] {frac * 100:5.1f}%"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def progress_line(rec: dict) -> str:
    """One line describing where a running job is (customer-files: one more line per customer)."""
    ph = rec.get("phase") or "-"
    if rec["workflow"] == "customer-files":
        return customer_progress(rec)
    prog = rec.get("progress", {}).get(ph, {})
    parts = [f"{rec['workflow']} {rec['target']}", f"state={rec['state']}", f"phase={ph}"]
    if "rows" in prog:
        parts.append(f"rows={prog['rows']:,}")
    if "bytes" in prog:
        parts.append(f"bytes={_fmt_bytes(prog['bytes'])}")
        parts.append(_bar(prog["bytes"], prog.get("total_bytes")))
    entry = next((p for p in rec["phases"] if p["name"] == ph), None)
    if entry and entry.get("last_error") and entry["state"] == "running":
        parts.append(f"retrying (attempt {entry['attempts']}): {entry['last_error']}")
    return "  ".join(x for x in parts if x)


def customer_progress(rec: dict) -> str:
    """A customer-files run: a header line, then a bar of files and bytes done per customer."""
    lines = [f"{rec['workflow']} {rec['target']}  state={rec['state']}  phase={rec.get('phase') or '-'}"]
    copies = [p for p in rec["phases"] if p["name"].startswith("copy:")]
    width = max((len(p["name"]) - 5 for p in copies), default=0)
    for p in copies:
        customer = p["name"][5:]
        prog = rec.get("progress", {}).get(p["name"])
        if prog:
            text = (f"{_bar(prog['bytes_done'], prog['bytes_total']) or '[no data]'}  "
                    f"{prog['files_done']}/{prog['files_total']} files  {_fmt_bytes(prog['bytes_done'])}"
                    f"/{_fmt_bytes(prog['bytes_total'])}" + (f"  {prog['failed']} failed" if prog.get("failed") else "")
                    + ("" if p["state"] in ("pending", "running") else f"  {p['state']}"))
        elif p["state"] in ("pending", "running"):
            text = "waiting"
        else:
            text = f"{p['state']}: {p.get('note') or p.get('error') or ''}"
        lines.append(f"  {customer:<{width}}  {text}")
    return "\n".join(lines)


#: how long ``--wait`` rides through an unreachable Redis before giving up (the job itself goes on)
BROKER_BLIP_SECONDS = 120.0


def wait_for(res, job_id: str, show: bool, timeout: float | None = None,
             blip: float = BROKER_BLIP_SECONDS) -> dict:
    """Poll the job record until it is terminal, drawing progress on stderr.

    Redis unreachable for up to ``blip`` seconds in a row (a restart, a
    fail-over) is waited out with one notice on stderr; longer, the error is raised.
    """
    from base.errors import ConnectionFailed
    from backup.jobs import TERMINAL

    deadline = time.monotonic() + timeout if timeout else None
    tty = sys.stderr.isatty()
    last = ""
    unreachable_since = None
    while True:
        try:
            rec = res.jobs.find(job_id)
        except ConnectionFailed as e:
            now_m = time.monotonic()
            if unreachable_since is None:
                unreachable_since = now_m
                sys.stderr.write(f"\n(Redis unreachable, still waiting for job {job_id}: {e.one_line()})\n")
                sys.stderr.flush()
            elif now_m - unreachable_since > blip:
                raise ConnectionFailed(f"Redis unreachable for {blip:.0f}s while waiting for job {job_id} (it "
                                       f"keeps running; see backupctl status {job_id}): {e}") from e
            rec = None
        else:
            if unreachable_since is not None:
                sys.stderr.write("(Redis reachable again)\n")
            unreachable_since = None
        if rec is not None:
            line = progress_line(rec)
            if show and line != last:
                # On a terminal, go back to the first line drawn last time and redraw from there.
                back = f"\x1b[{last.count(chr(10))}F" if "\n" in last else "\r"
                sys.stderr.write((back + "\x1b[J" + line) if tty else line + "\n")
                sys.stderr.flush()
                last = line
            if rec["state"] in TERMINAL:
                if show and tty:
                    sys.stderr.write("\n")
                return rec
        if deadline and time.monotonic() > deadline:
            raise BackupError(f"job {job_id} still not finished after {timeout:.0f}s (it keeps running; "
                              f"see backupctl status {job_id})")
        time.sleep(0.5)


def summary(rec: dict) -> str:
    """Human summary of a finished job."""
    out = rec.get("outputs", {})
    lines = [f"job {rec['job_id']}: {rec['workflow']} {rec['target']} -> {rec['state'].upper()}"]
    if rec.get("reason"):
        lines.append(f"  reason: {rec['reason']}")
    if rec.get("error"):
        lines.append(f"  error: {rec['error']}")
    for k in ("rows", "bytes", "sha256", "local_path", "remote_uri", "resumed_from", "rows_read", "rows_accepted",
              "rows_rejected", "partitions_written", "backup_table", "rejects_table"):
        if out.get(k) is not None:
            lines.append(f"  {k}: {out[k]}")
    if out.get("flag"):
        lines.append(f"  flag: {out['flag']} ({out.get('flag_uri')})")
    if out.get("totals"):
        lines.append("  files: " + ", ".join(f"{k}={v}" for k, v in out["totals"].items()))
        for k in ("manifest", "location"):  # customer-files' manifest; a restore's target location
            if out.get(k):
                lines.append(f"  {k}: {out[k]}")
    if rec["workflow"] == "retention":
        lines += retention_lines(out)
    for p in rec["phases"]:
        took = f"{p['finished'] - p['started']:.1f}s" if p.get("started") and p.get("finished") else ""
        extra = p.get("note") or p.get("error") or ""
        lines.append(f"  - {p['name']:<9} {p['state']:<8} attempts={p['attempts']} {took} {extra}".rstrip())
    if rec.get("alert"):
        lines.append(f"  alert: {'sent' if rec['alert'].get('sent') else rec['alert'].get('reason')}")
    return "\n".join(lines)


def retention_lines(out: dict) -> list[str]:
    """What a retention run deleted, or (dry run) would delete, one file a line."""
    lines = []
    if out.get("dry_run"):
        lines += [f"  would delete: {a['uri']}  (runs {', '.join(a['runs'])})" for a in out.get("delete") or []]
    lines += [f"  deleted: {d['uri']}" for d in out.get("deleted") or []]
    lines += [f"  already gone: {d['uri']}" for d in out.get("gone") or []]
    lines += [f"  left (changed since recorded): {d['uri']}" for d in out.get("changed") or []]
    lines += [f"  left alone: {p}" for p in out.get("problems") or []]
    return lines


def cmd_plan(args) -> int:
    """What a run would do, from the workflow's ``plan`` (reads only; no job record, no file)."""
    from backup.workflow import definition
    from base.errors import InvalidInput

    wf = definition(args.workflow)
    if wf.plan is None:
        raise InvalidInput(f"{wf.name} has no plan (plans: {', '.join(w.name for w in _planned())})")
    request = _request(wf, args)
    found = wf.plan(_resources(args), **request)
    print(json.dumps(found, indent=2, default=str) if args.json else render_plan(found))
    return EXIT_OK


def _planned() -> list:
    from backup.workflow import definitions

    return [wf for wf in definitions() if wf.plan is not None]


def render_plan(found: dict, indent: int = 0) -> str:
    """A plan as indented ``key: value`` lines (lists of files one per line)."""
    pad = "  " * indent
    lines = []
    for key, value in found.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(render_plan(value, indent + 1))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key}: {len(value)}")
            lines.extend(f"{pad}  - " + "  ".join(f"{k}={v}" for k, v in item.items()) for item in value)
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: {len(value)}" if len(value) > 1 else f"{pad}{key}: {value[0] if value else '-'}")
            if len(value) > 1:
                lines.extend(f"{pad}  - {item}" for item in value)
        else:
            lines.append(f"{pad}{key}: {'-' if value is None else value}")
    return "\n".join(line for line in lines if line)


def cmd_drills(args) -> int:
    """The latest drill of each target: passed or failed, how long ago, the backup it restored."""
    from backup.restore_drill import last_results

    results = last_results(_resources(args))
    now_s = time.time()
    rows = [{"target": t, "passed": r["passed"], "finished": r["finished"],
             "age_seconds": round(now_s - r["finished"], 1), "drill_job": r.get("drill_job"),
             "restore_job": r.get("restore_job"), "backup_job": r.get("backup_job"), "error": r.get("error")}
            for t, r in results.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no drills yet (backupctl run restore-drill; targets in restore_drill.targets)")
    for r in rows:
        print(f"{r['target']:<40} {'PASSED' if r['passed'] else 'FAILED':<7} {_age(r['age_seconds']):>9} ago  "
              f"drill {r['drill_job']}" + (f"  {r['error']}" if r["error"] else ""))
    return EXIT_OK


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def cmd_status(args) -> int:
    res = _resources(args)
    rec = res.jobs.get(args.job_id)
    print(json.dumps(rec, indent=2) if args.json else summary(rec))
    return EXIT_OK


def cmd_jobs(args) -> int:
    res = _resources(args)
    import datetime as dt

    for rec in res.jobs.recent(args.limit):
        t = dt.datetime.fromtimestamp(rec["created"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{rec['job_id']}  {t}Z  {rec['workflow']:<14} {rec['target']:<30} {rec['state']:<8} "
              f"{rec.get('phase') or ''}")
    return EXIT_OK


def cmd_sample_data(args) -> int:
    from base.identifiers import TableName
    from local_platform.sample_data import create_sample_table

    res = _resources(args)
    with res.hive() as hive:
        n = create_sample_table(hive, TableName.parse(args.table), rows=args.rows)
    print(json.dumps({"table": args.table, "rows": n}))
    return EXIT_OK


def cmd_demo(args) -> int:
    from base.identifiers import TableName
    from local_platform import demo

    res = _resources(args)
    table = TableName.parse(args.table)
    if args.action == "prepare":
        for what, made in demo.prepare(res, table, export_rows=args.rows).items():
            print(f"{what}: {made}")
    else:
        print(demo.summary(res, table))
    return EXIT_OK


# -- operations: schedule, beat, flower, metrics ---------------------------------

def cmd_schedule(args) -> int:
    import datetime as dt

    from config.schedule import next_fires
    from config.workflows import workflow_tasks

    settings = _settings(args)
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for e in settings.schedules:
        fires = next_fires(e.cron, e.timezone, now, args.count) if e.enabled else []
        rows.append({"name": e.name, "workflow": e.workflow, "task": workflow_tasks()[e.workflow], "cron": e.cron,
                     "timezone": e.timezone, "kwargs": e.kwargs, "enabled": e.enabled,
                     "next": [f.isoformat() for f in fires],
                     "next_utc": [f.astimezone(dt.timezone.utc).isoformat() for f in fires]})
    rows.sort(key=lambda r: (not r["enabled"], r["next_utc"][:1], r["name"]))
    beat = _beat_state()
    if args.json:
        print(json.dumps({"beat": beat, "schedules": rows}, indent=2))
        return EXIT_OK
    print(f"beat: {beat}")
    if not rows:
        print("no schedules in the config (section: schedules)")
    for r in rows:
        when = ", ".join(r["next"]) if r["enabled"] else "disabled"
        args_text = " ".join(f"{k}={v}" for k, v in r["kwargs"].items())
        print(f"{r['name']:<24} {r['workflow']:<14} {r['cron']:<16} {r['timezone']:<16} {args_text}")
        print(f"{'':<24} next: {when}")
    return EXIT_OK


def _beat_state() -> str:
    from workers.app import app
    from workers.beat import lock_holder_present

    try:
        return "active (a beat holds the lock)" if lock_holder_present(app) else "none running (nothing fires)"
    except Exception as e:  # the listing stays useful without Redis
        return f"unknown (Redis: {type(e).__name__})"


def cmd_beat(args) -> int:
    _settings(args)
    from workers.app import app
    from workers.beat import lock_holder_present, run

    if args.check:
        return EXIT_OK if lock_holder_present(app) else EXIT_FAILED
    run(args.loglevel)
    return EXIT_OK


def cmd_flower(args) -> int:
    from workers.flower import run

    run(_settings(args), args.address, args.port)
    return EXIT_OK


def cmd_metrics(args) -> int:
    from workers.metrics import serve

    serve(_settings(args), args.address, args.port)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of backupctl."""
    from backup.workflow import definitions

    ap = argparse.ArgumentParser(prog="backupctl", description="mediation-backup control")
    ap.add_argument("--config", help="YAML config (default: $BACKUP_CONFIG or config/local.yaml)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("platform", help="start/stop the embedded local platform")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--only", help="comma-separated services: redis,metastore,hdfs,yarn,spark,sshd,sinks")
    p.add_argument("--json", action="store_true", help="status: every service with its pid, ports and URLs as JSON")
    p.set_defaults(func=cmd_platform)

    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument("-Q", "--queues", default="default,io,spark")
    p.add_argument("-c", "--concurrency", type=int)
    p.add_argument("-n", "--hostname")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    verbs: dict[str, argparse._SubParsersAction] = {}
    for wf in definitions():
        if wf.verb not in verbs:
            p = sub.add_parser(wf.verb, help="start a workflow" if wf.verb == "run" else f"start a {wf.verb} workflow")
            verbs[wf.verb] = p.add_subparsers(dest="cli_name", required=True, metavar="WORKFLOW")
        # A workflow serving several backup workflows (retention) has one sub-command per backup workflow.
        for name, kind in ([(k, k) for k in wf.kinds] if wf.kinds else [(wf.cli_name or wf.name, None)]):
            w = verbs[wf.verb].add_parser(name, help=wf.summary, description=f"{wf.verb} {name}: {wf.summary}")
            if wf.target_argument:
                w.add_argument("target", nargs="?", metavar="TARGET", help=wf.target_help)
            else:
                w.add_argument("target", nargs="?", metavar="TARGET",
                               help=f"none ({wf.name} always covers {wf.target_help}), or {wf.fixed_target!r}")
            for option in wf.options:
                option.add_to(w)
            if wf.plan is not None:
                w.add_argument("--plan", action="store_true", help="say what the run would do and start nothing "
                               "(same as backupctl plan)")
            w.add_argument("--wait", action="store_true", help="show progress and wait for the end")
            w.add_argument("--json", action="store_true", help="print the final job record as JSON")
            w.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
            w.set_defaults(func=cmd_run, workflow=wf.name, kind=kind)

    p = sub.add_parser("plan", help="say what a run would do, touching nothing")
    plans = p.add_subparsers(dest="plan_name", required=True, metavar="WORKFLOW")
    for wf in definitions():
        if wf.plan is None:
            continue
        w = plans.add_parser(wf.cli_name or wf.name, help=wf.summary, description=f"plan of {wf.command}: {wf.summary}")
        w.add_argument("target", nargs="?", metavar="TARGET", help=wf.target_help if wf.target_argument else
                       f"none ({wf.name} always covers {wf.target_help}), or {wf.fixed_target!r}")
        for option in wf.options:
            option.add_to(w)
        w.add_argument("--json", action="store_true", help="the plan as JSON (for scripts)")
        w.set_defaults(func=cmd_plan, workflow=wf.name)

    p = sub.add_parser("drills", help="the latest restore drill of each target and its age")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drills)

    p = sub.add_parser("status", help="show a job record")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("jobs", help="recent runs")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("sample-data", help="create a sample table on the local platform")
    p.add_argument("table")
    p.add_argument("--rows", type=int, default=10_000)
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("demo", help="make demo: prepare the inputs of the three workflows, or summarize their results")
    p.add_argument("action", choices=["prepare", "summary"])
    p.add_argument("--table", default="mnaas.customer_traffic", help="the sample table edge-export reads")
    p.add_argument("--rows", type=int, default=50_000, help="prepare: rows of the sample table edge-export reads")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("schedule", help="list the scheduled runs and their next fire times")
    p.add_argument("--count", type=int, default=1, help="next fire times per entry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("beat", help="run celery beat (one active beat through a Redis lock)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--check", action="store_true", help="exit 0 if some beat holds the lock (healthcheck)")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("flower", help="run Flower with a login (FLOWER_BASIC_AUTH or OAuth)")
    p.add_argument("--address", help="listen address (default: flower.address)")
    p.add_argument("--port", type=int, help="port (default: flower.port)")
    p.set_defaults(func=cmd_flower)

    p = sub.add_parser("metrics", help="serve the backup counters to Prometheus")
    p.add_argument("--address", help="listen address (default: metrics.address)")
    p.add_argument("--port", type=int, help="port (default: metrics.port)")
    p.set_defaults(func=cmd_metrics)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the backupctl console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BackupError as e:
        print(f"backupctl: error: {e.one_line()}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("backupctl: interrupted (the job keeps running in the workers)", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # keep the promise of one clear line, even for the unexpected
        print(f"backupctl: error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
