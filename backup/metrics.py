"""Backup counters per workflow, kept in Redis by the finish phase and exported to Prometheus.

One hash per workflow at ``<prefix>:metrics:wf:<workflow>`` with the fields
``jobs`` (successful runs), ``rows``, ``files``, ``bytes`` and
``last_success`` (epoch seconds); the set ``<prefix>:metrics:workflows`` names
the workflows that have counters.  A workflow reports ``rows``, ``bytes`` and
``files`` in its job outputs; a workflow whose outputs have no ``files`` but a
``remote_uri`` (edge-export: one archive) counts one file.

A finish phase delivered twice (worker died after finishing, before the ack)
must not count twice: each job is counted once, guarded by
``<prefix>:metrics:counted:<job_id>`` inside the same Lua script.  Counting is
best effort: a Redis error is logged and never fails the job it describes.
"""

from __future__ import annotations

import logging

import redis

from backup.jobs import RETENTION_SECONDS

log = logging.getLogger(__name__)

FIELDS = ("jobs", "rows", "files", "bytes")

# KEYS[1]=counted marker KEYS[2]=hash KEYS[3]=workflow set
# ARGV[1]=ttl ARGV[2]=rows ARGV[3]=files ARGV[4]=bytes ARGV[5]=finished ARGV[6]=workflow
_RECORD = """
if not redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('HINCRBY', KEYS[2], 'jobs', 1)
redis.call('HINCRBY', KEYS[2], 'rows', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'files', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'bytes', ARGV[4])
redis.call('HSET', KEYS[2], 'last_success', ARGV[5])
return 1
"""


def _key(prefix: str, workflow: str) -> str:
    return f"{prefix}:metrics:wf:{workflow}"


def job_counts(rec: dict) -> dict[str, int]:
    """Rows, files and bytes a successful job backed up, from its outputs."""
    out = rec.get("outputs") or {}
    files = out.get("files")
    if files is None:
        files = 1 if out.get("remote_uri") else 0
    elif isinstance(files, list):  # restore-customer-files: one entry per file restored
        files = len(files)
    return {"rows": int(out.get("rows") or 0), "files": int(files), "bytes": int(out.get("bytes") or 0)}


def record_metrics(res, rec: dict) -> bool:
    """Add a successful job to its workflow's counters, once per job; True if it was counted now."""
    prefix = res.settings.redis.key_prefix
    c = job_counts(rec)
    try:
        done = res.redis.eval(_RECORD, 3, f"{prefix}:metrics:counted:{rec['job_id']}",
                              _key(prefix, rec["workflow"]), f"{prefix}:metrics:workflows", RETENTION_SECONDS,
                              c["rows"], c["files"], c["bytes"], rec.get("finished") or 0, rec["workflow"])
    except redis.RedisError as e:  # counters are best effort; the backup itself succeeded
        log.warning("metrics of job %s not recorded: %s", rec["job_id"], e)
        return False
    return bool(done)


def read_counters(client: redis.Redis, prefix: str) -> dict[str, dict[str, float]]:
    """workflow → {jobs, rows, files, bytes, last_success} for every workflow with counters."""
    out = {}
    for raw in sorted(client.smembers(f"{prefix}:metrics:workflows")):
        workflow = raw.decode()
        values = {k.decode(): float(v) for k, v in client.hgetall(_key(prefix, workflow)).items()}
        out[workflow] = {f: values.get(f, 0.0) for f in (*FIELDS, "last_success")}
    return out
