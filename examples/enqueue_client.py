"""Enqueue a backup from another service and follow it to its end, with only ``celery`` and ``redis`` installed.

This file does not import mediation-backup: it is what a calling service
needs, following docs/enqueue-contract.md.

    pip install "celery[redis]==5.7.0" redis==8.1.0
    python enqueue_client.py --redis-url redis://:PASSWORD@redis-host:6379/0 \\
        --task backup.edge_export --kwargs '{"table": "mnaas.customer_traffic"}' \\
        [--idempotency-key nightly-2026-11-25] [--prefix mb] [--timeout 3600] [--json]

Exit status: 0 success, 1 failed or skipped, 2 could not enqueue or follow
(e.g. timed out; the job keeps running).  Progress goes to stderr, the final
job record (``--json``) or a one-line summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import redis
from celery import Celery

TERMINAL = ("success", "failed", "skipped")
QUEUE = "default"  # the queue the workers' entry tasks listen on (contract)


def enqueue(app: Celery, task: str, kwargs: dict, timeout: float) -> str:
    """Send the entry task by name and return the job id the workers answer with."""
    task_id = uuid.uuid4().hex
    result = app.send_task(task, kwargs=kwargs, task_id=task_id, queue=QUEUE)
    # The entry task answers within seconds with {"job_id", "state"}: the job id is the task id,
    # unless an idempotency_key matched an earlier request, whose job id comes back instead.
    answer = result.get(timeout=timeout)
    return answer["job_id"]


def follow(client: redis.Redis, prefix: str, job_id: str, timeout: float) -> dict:
    """Poll the job record until it reaches a final state; return it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        raw = client.get(f"{prefix}:job:{job_id}")
        if raw is not None:
            rec = json.loads(raw)
            seen = (rec["state"], rec.get("phase"))
            if seen != last:
                print(f"job {job_id}: state={rec['state']} phase={rec.get('phase')}", file=sys.stderr)
                last = seen
            if rec["state"] in TERMINAL:
                return rec
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} not finished after {timeout:.0f}s (it keeps running)")


def main(argv: list[str] | None = None) -> int:
    """Enqueue, follow, report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default=os.environ.get("BACKUP_REDIS_URL", "redis://127.0.0.1:6379/0"),
                    help="broker, result backend and job records (default: $BACKUP_REDIS_URL)")
    ap.add_argument("--prefix", default="mb", help="key prefix of the job records (redis.key_prefix)")
    ap.add_argument("--task", default="backup.edge_export", help="public entry task name")
    ap.add_argument("--kwargs", required=True, help="keyword arguments as a JSON object")
    ap.add_argument("--idempotency-key", help="same key within the window returns the earlier job")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to follow the job")
    ap.add_argument("--json", action="store_true", help="print the final job record as JSON")
    args = ap.parse_args(argv)

    kwargs = json.loads(args.kwargs)
    if args.idempotency_key:
        kwargs["idempotency_key"] = args.idempotency_key
    app = Celery("backup-client", broker=args.redis_url, backend=args.redis_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True)
    try:
        job_id = enqueue(app, args.task, kwargs, timeout=60)
        print(f"job {job_id} enqueued", file=sys.stderr)
        rec = follow(redis.Redis.from_url(args.redis_url), args.prefix, job_id, args.timeout)
    except Exception as e:  # one clear line for the caller, whatever went wrong
        print(f"enqueue_client: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        print(f"{rec['job_id']} {rec['state']} {rec.get('error') or rec.get('reason') or ''}".rstrip())
    return 0 if rec["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
