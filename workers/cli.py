"""``backupctl``: run, watch and operate the backup workflows.

    backupctl platform up|down|status
    backupctl worker [-Q io,default] [-c N]        (same as: celery -A workers.app worker)
    backupctl run edge-export DB.TABLE [--months N] [--end DATE] [--wait] [--json]
    backupctl status JOB_ID [--json]
    backupctl jobs [--limit N]
    backupctl sample-data DB.TABLE [--rows N]

Errors are one line on stderr with a non-zero exit; no tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

from backup.errors import BackupError, ConfigError

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
    from workers.platform import LocalPlatform

    plat = LocalPlatform(_settings(args))
    only = args.only.split(",") if args.only else None
    if args.action == "up":
        report = plat.up(only)
    elif args.action == "down":
        report = plat.down(only)
    else:
        report = plat.status()
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

WORKFLOW_TASKS = {"edge-export": "backup.edge_export"}


def cmd_run(args) -> int:
    res = _resources(args)
    from workers.app import app

    if args.workflow == "edge-export":
        from backup.edge_export import validate_request

        validate_request(res, args.target, args.months, args.end)  # fail here, before enqueueing
        kwargs = {"table": args.target, "months": args.months, "end": args.end}
    else:
        raise ConfigError(f"unknown workflow {args.workflow!r}")
    job_id = uuid.uuid4().hex
    app.send_task(WORKFLOW_TASKS[args.workflow], kwargs=kwargs, task_id=job_id)
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
    """One line describing where a running job is."""
    ph = rec.get("phase") or "-"
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


def wait_for(res, job_id: str, show: bool, timeout: float | None = None) -> dict:
    """Poll the job record until it is terminal, drawing progress on stderr."""
    from backup.jobs import TERMINAL

    deadline = time.monotonic() + timeout if timeout else None
    tty = sys.stderr.isatty()
    last = ""
    while True:
        rec = res.jobs.find(job_id)
        if rec is not None:
            line = progress_line(rec)
            if show and line != last:
                sys.stderr.write(("\r\x1b[2K" + line) if tty else line + "\n")
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
    for k in ("rows", "bytes", "sha256", "local_path", "remote_uri", "resumed_from"):
        if out.get(k) is not None:
            lines.append(f"  {k}: {out[k]}")
    for p in rec["phases"]:
        took = f"{p['finished'] - p['started']:.1f}s" if p.get("started") and p.get("finished") else ""
        extra = p.get("note") or p.get("error") or ""
        lines.append(f"  - {p['name']:<9} {p['state']:<8} attempts={p['attempts']} {took} {extra}".rstrip())
    if rec.get("alert"):
        lines.append(f"  alert: {'sent' if rec['alert'].get('sent') else rec['alert'].get('reason')}")
    return "\n".join(lines)


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
    from backup.identifiers import TableName
    from workers.sample_data import create_sample_table

    res = _resources(args)
    with res.hive() as hive:
        n = create_sample_table(hive, TableName.parse(args.table), rows=args.rows)
    print(json.dumps({"table": args.table, "rows": n}))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of backupctl."""
    ap = argparse.ArgumentParser(prog="backupctl", description="mediation-backup control")
    ap.add_argument("--config", help="YAML config (default: $BACKUP_CONFIG or config/local.yaml)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("platform", help="start/stop the embedded local platform")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--only", help="comma-separated services: redis,spark,sshd,sinks")
    p.set_defaults(func=cmd_platform)

    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument("-Q", "--queues", default="default,io,spark")
    p.add_argument("-c", "--concurrency", type=int)
    p.add_argument("-n", "--hostname")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("run", help="start a workflow")
    p.add_argument("workflow", choices=sorted(WORKFLOW_TASKS))
    p.add_argument("target", help="DB.TABLE")
    p.add_argument("--months", type=int, help="window length in calendar months (default from config)")
    p.add_argument("--end", help="window end, exclusive, YYYY-MM-DD (default: first day of this month)")
    p.add_argument("--wait", action="store_true", help="show progress and wait for the end")
    p.add_argument("--json", action="store_true", help="print the final job record as JSON")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    p.set_defaults(func=cmd_run)

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
