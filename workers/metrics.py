"""Prometheus exporter of the backup counters: ``backupctl metrics``.

Serves ``/metrics`` (text exposition format) with, per workflow:

    mediation_backup_jobs_succeeded_total{workflow}       successful runs
    mediation_backup_rows_total{workflow}                 rows backed up
    mediation_backup_files_total{workflow}                files backed up
    mediation_backup_bytes_total{workflow}                bytes backed up
    mediation_backup_last_success_timestamp_seconds{workflow}
    backup_last_verified_restore_timestamp_seconds{workflow,target}   end of the latest passing restore
                                                          drill of a target (backup/restore_drill.py)

read from Redis on every scrape (backup/metrics.py keeps them, written by each
job's finish phase), plus ``mediation_backup_redis_up`` (0 when Redis did not
answer this scrape).  Any number of exporters may run: they hold no state.
The exporter has no login: bind it to an internal address and let only the
Prometheus scraper reach it.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from backup.metrics import read_counters
from backup.restore_drill import verified_restores

log = logging.getLogger(__name__)

_COUNTERS = (
    ("jobs", "mediation_backup_jobs_succeeded", "Backup runs that finished successfully"),
    ("rows", "mediation_backup_rows", "Rows backed up by successful runs"),
    ("files", "mediation_backup_files", "Files backed up by successful runs"),
    ("bytes", "mediation_backup_bytes", "Bytes backed up by successful runs"),
)


class BackupCollector:
    """Reads the counters from Redis at each scrape."""

    def __init__(self, client: redis.Redis, prefix: str):
        self.client, self.prefix = client, prefix

    def collect(self):
        up = GaugeMetricFamily("mediation_backup_redis_up", "1 if Redis answered this scrape")
        try:
            counters = read_counters(self.client, self.prefix)
            verified = verified_restores(self.client, self.prefix)
        except redis.RedisError as e:
            log.warning("metrics scrape: Redis error: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for field, name, doc in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["workflow"])
            for workflow, values in counters.items():
                family.add_metric([workflow], values[field])
            yield family
        last = GaugeMetricFamily("mediation_backup_last_success_timestamp_seconds",
                                 "End time of the latest successful run (epoch seconds)", labels=["workflow"])
        for workflow, values in counters.items():
            last.add_metric([workflow], values["last_success"])
        yield last
        proven = GaugeMetricFamily("backup_last_verified_restore_timestamp_seconds",
                                   "End time of the latest restore drill that passed (epoch seconds): how old the "
                                   "newest proven backup is", labels=["workflow", "target"])
        for (workflow, target), when in sorted(verified.items()):
            proven.add_metric([workflow, target], when)
        yield proven


def registry_for(client: redis.Redis, prefix: str) -> CollectorRegistry:
    """A registry holding only the backup collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(BackupCollector(client, prefix))
    return reg


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per scrape would drown the service log
        pass


def serve(settings, address: str | None = None, port: int | None = None) -> None:
    """Serve /metrics until interrupted."""
    from backup.resources import redis_client

    app = make_wsgi_app(registry_for(redis_client(settings), settings.redis.key_prefix))
    address = address or settings.metrics.address
    port = port or settings.metrics.port
    with make_server(address, port, app, handler_class=_QuietHandler) as httpd:
        log.info("metrics exporter on http://%s:%d/metrics", address, port)
        httpd.serve_forever()
