"""The resources a workflow uses, built from settings in one place.

An environment is a set of resources (the local platform and production
differ only in settings), never ``if local:`` branches in the workflows.
Tests build their own ``Resources`` from their own settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from backup.alerts import Alerter
from backup.jobs import JobStore
from backup.locks import LockManager
from config.settings import Settings


#: longest pause between two tries of a Redis command during an outage, seconds
REDIS_BACKOFF_CAP = 2.0


def redis_retry(grace: float) -> Retry:
    """redis-py's own retry for connection errors and timeouts, spread over about ``grace`` seconds."""
    return Retry(ExponentialBackoff(cap=REDIS_BACKOFF_CAP, base=0.1), retries=max(3, int(grace / REDIS_BACKOFF_CAP) + 4))


#: socket timeouts of a data connection (primary) and of a question to a sentinel, seconds
REDIS_SOCKET_TIMEOUT, REDIS_CONNECT_TIMEOUT, SENTINEL_TIMEOUT = 30, 10, 5


def redis_client(s: Settings) -> redis.Redis:
    """Redis client for locks, job records, alert episodes and metrics: the one place the project builds it.

    With ``redis://``/``rediss://`` a plain client; with ``sentinel://`` redis-py's
    own ``Sentinel(...).master_for(...)``, which asks the sentinels for the current
    primary on every (re)connect and treats a primary that turned replica as a lost
    connection.  Either way every command rides through an outage of about
    ``redis.outage_grace`` seconds (a restart, a fail-over) before it raises, with
    redis-py's own retry.  The password (BACKUP_REDIS_PASSWORD) goes to the primary
    only, never to the sentinels.
    """
    pw = s.secret("BACKUP_REDIS_PASSWORD")
    password = pw.get_secret_value() if pw else None
    options = dict(socket_timeout=REDIS_SOCKET_TIMEOUT, socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
                   health_check_interval=30, retry=redis_retry(s.redis.outage_grace),
                   retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    sentinel = s.redis.sentinel
    if sentinel is None:
        return redis.Redis.from_url(s.redis.url, password=password, **options)
    from redis.sentinel import Sentinel

    asker = Sentinel(list(sentinel.sentinels), sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT,
                                                                "socket_connect_timeout": SENTINEL_TIMEOUT})
    return asker.master_for(sentinel.master, db=sentinel.db, password=password, **options)


@dataclass
class Resources:
    """Clients and stores for one process, created lazily."""

    settings: Settings
    _redis: redis.Redis | None = field(default=None, repr=False)
    _spark: object | None = field(default=None, repr=False)  # a spark-submit driver's own session (DriverSpark)

    @cached_property
    def redis(self) -> redis.Redis:
        return self._redis or redis_client(self.settings)

    @cached_property
    def locks(self) -> LockManager:
        r = self.settings.redis
        return LockManager(self.redis, r.key_prefix, self.settings.lock.ttl, wait_replicas=r.replicas_to_wait,
                           wait_timeout_ms=r.wait_timeout_ms)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.redis, self.settings.redis.key_prefix, self.settings.redis.outage_grace)

    @cached_property
    def alerter(self) -> Alerter:
        return Alerter(self.settings, self.redis)

    def hive(self):
        """A new HiveServer2/Impala connection (caller closes it)."""
        from connectors.hive import HiveClient

        return HiveClient.from_settings(self.settings)

    def spark(self):
        """Spark, by the scheme of ``spark.remote``: Spark Connect sessions (opened per use with
        ``.session()``), or a spark-submit driver per phase (``run_phase``)."""
        if self._spark is not None:
            return self._spark
        if self.settings.spark.connect:
            from connectors.spark import SparkConnect

            return SparkConnect.from_settings(self.settings)
        from backup.spark_submit import SparkSubmit

        return SparkSubmit.from_settings(self.settings)

    def sftp(self):
        """The SFTP target (connections are opened per use), its uploads paced by the host's shared budget."""
        from connectors.sftp import SftpTarget

        target = SftpTarget.from_settings(self.settings)
        target.pace = self.bandwidth_budget(target.s.host, target.s.port)
        return target

    def bandwidth_budget(self, host: str, port: int):
        """The shared upload budget of ``host:port`` (``sftp.rate_limit_mbps`` for the backup server), or None."""
        from backup.bandwidth import SharedBudget

        s = self.settings.sftp
        if not s.rate_limit_mbps or (host, port) != (s.host, s.port):
            return None
        return SharedBudget(self.redis, self.settings.redis.key_prefix, f"{host}:{port}", s.rate_limit_mbps)
