"""The Celery application: ``celery -A workers.app worker`` works as well as ``backupctl worker``.

Reliability settings, chosen on purpose:

* ``task_acks_late`` + idempotent phases: a message is acknowledged only after
  its phase finished, so a worker that dies mid-phase does not lose the work.
  Every phase can run again safely (temp names, verify-before-commit, fenced
  status writes).
* ``task_reject_on_worker_lost``: a child process killed by a signal (OOM
  killer, SIGKILL) gives its message back instead of marking it failed.  To
  stop a message that kills every worker from cycling forever, each phase
  counts its deliveries in the job record and fails for good with
  ``TooManyDeliveries`` past ``celery.max_deliveries`` (backup.runner).
  A worker whose main process is killed leaves its message unacked; Redis
  redelivers it after ``visibility_timeout``, counted the same way.
* ``worker_prefetch_multiplier = 1``: a worker reserves one message per process,
  so long copies do not hold other jobs hostage in a busy worker's buffer.
* ``visibility_timeout`` (broker, result backend and app option): how long a
  message of a worker that died stays unacknowledged before another worker
  gets it.  Every live worker re-stamps the messages it holds every
  ``RESTORE_SWEEP_SECONDS`` (workers/redis_transport.py), so a running task is
  never redelivered however long it runs, and the timeout can be minutes:
  recovery after a whole worker dies takes ``visibility_timeout`` + 5 s.
* explicit soft/hard time limits; ``broker_connection_retry_on_startup``;
  results kept longer than any chain (``result_expires``).
* ``broker_transport``: kombu's Redis transport with the two fixes of
  workers/redis_transport.py, so a worker survives a broker outage without
  dying on a closed channel or requeueing the tasks it is still running.
  With ``redis.url: sentinel://…`` kombu's own Sentinel transport with the
  same fixes, Celery's own ``SentinelBackend`` for results and redbeat's
  Sentinel support for beat: each asks the sentinels for the primary on
  every reconnect, so a fail-over is ridden through like a restart.

Secrets never travel in task arguments: tasks get table names and job ids;
passwords are read from the environment inside the worker.
"""

from __future__ import annotations

import ssl
from urllib.parse import quote, urlsplit, urlunsplit

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, task_prerun

from backup.workflow import definition_of_task
from config.schedule import beat_schedule
from config.settings import Settings, get_settings
from config.workflows import WORKFLOWS

#: seconds between two sweeps of the broker's unacknowledged messages by each worker (re-stamp, then restore)
RESTORE_SWEEP_SECONDS = 5

__all__ = ["RESTORE_SWEEP_SECONDS", "app", "celery_config", "create_app", "route_task"]


def route_task(name, args=None, kwargs=None, options=None, task=None, **kw) -> dict:
    """Celery router: a phase goes to the queue its workflow declares (transfers and copies on ``io``, Spark
    phases on ``spark``); entry tasks and everything else to ``default``."""
    found = definition_of_task(name)
    if found and found[1] is not None:
        return {"queue": found[1].queue}
    return {"queue": "default"}


def redis_url_with_password(s: Settings) -> str:
    """The Redis URL with BACKUP_REDIS_PASSWORD inserted (Celery masks it in banners and Flower).

    With ``sentinel://`` the form Celery and kombu read: one ``sentinel://:password@host:port/db`` per
    sentinel, joined by ``;`` (the password is the primary's; kombu and Celery never send it to a sentinel).
    """
    pw = s.secret("BACKUP_REDIS_PASSWORD")
    sentinel = s.redis.sentinel
    if sentinel is not None:
        password = pw.get_secret_value() if pw else None
        return ";".join(sentinel.url_for(host, port, password=password) for host, port in sentinel.sentinels)
    if not pw:
        return s.redis.url
    parts = urlsplit(s.redis.url)
    user, _, host = parts.netloc.rpartition("@")  # an ACL user name stays (the URL carries no password: settings)
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(pw.get_secret_value(), safe='')}@{host}"))


def _sentinel_config(s: Settings) -> dict:
    """What differs with ``redis.url: sentinel://``: the transport, the master's name, redbeat's client."""
    from backup.resources import SENTINEL_TIMEOUT

    sentinel = s.redis.sentinel
    if sentinel is None:
        return {}
    # Every sentinel:// URL a connection fails over to gets our transport too (workers/redis_transport.py).
    from workers.redis_transport import register_sentinel_alias

    register_sentinel_alias()
    pw = s.secret("BACKUP_REDIS_PASSWORD")
    asking = {"master_name": sentinel.master,
              "sentinel_kwargs": {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}}
    return {
        "broker_transport": "workers.redis_transport:SentinelTransport",
        "sentinel_options": asking,
        # redbeat reads a redis-sentinel:// URL as "use redbeat_redis_options' sentinels" (its own Sentinel client).
        "redbeat_redis_url": sentinel.url_for(*sentinel.sentinels[0], scheme="redis-sentinel"),
        "redbeat_redis_options": {"sentinels": list(sentinel.sentinels), "service_name": sentinel.master,
                                  "db": sentinel.db, "password": pw.get_secret_value() if pw else None,
                                  "socket_timeout": 30, "sentinel_kwargs": asking["sentinel_kwargs"]},
    }


def celery_config(s: Settings) -> dict:
    """Celery settings derived from our typed settings."""
    url = redis_url_with_password(s)
    c = s.celery
    transport = {"visibility_timeout": c.visibility_timeout}
    # The broker's sweep (workers/redis_transport.py): every 5 s a worker re-stamps the messages it holds and
    # restores those no live worker stamped for visibility_timeout; a dead worker's sweep mutex frees in 30 s.
    broker_transport = {**transport, "unacked_restore_interval": RESTORE_SWEEP_SECONDS, "unacked_restore_throttle": 1,
                        "unacked_mutex_expire": 30}
    sentinel = _sentinel_config(s)
    if sentinel:
        asking = sentinel.pop("sentinel_options")
        transport, broker_transport = {**transport, **asking}, {**broker_transport, **asking}
    config = {
        "broker_url": url,
        "broker_transport": "workers.redis_transport:Transport",
        "result_backend": url,
        "broker_transport_options": broker_transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": c.visibility_timeout,
        "broker_connection_retry_on_startup": True,
        # A worker waits out a broker outage of any length instead of exiting after 100 tries.
        "broker_connection_max_retries": None,
        # Sending a message (a chain's next phase, a retry) rides through an outage of redis.outage_grace
        # seconds; Celery's default gives up after 3 tries in 0.6 s, and a retry that cannot be sent
        # becomes Reject(requeue=False): the phase's message is dropped.
        "task_publish_retry_policy": {"max_retries": max(3, s.redis.outage_grace // 2 + 2), "interval_start": 0,
                                      "interval_step": 0.5, "interval_max": 2},
        # Results and progress states likewise, instead of failing the task that reports them.
        "result_backend_always_retry": True,
        "result_backend_max_retries": max(3, s.redis.outage_grace // 2 + 2),
        "result_backend_max_sleep_between_retries_ms": 2000,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": c.task_time_limit,
        "task_soft_time_limit": c.task_soft_time_limit,
        "result_expires": c.result_expires,
        "result_extended": True,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": "default",
        "task_routes": (route_task,),
        # Read when a worker starts, so a workflow registered before then (config.workflows) is included.
        "include": [e.tasks for e in WORKFLOWS.values()] + ["tasks.maintenance"],
        "worker_concurrency": c.worker_concurrency,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        # Beat (workers/beat.py): redbeat keeps the schedule in Redis; its lock lets one beat fire at a time.
        "beat_scheduler": "workers.beat:ConfiguredRedBeatScheduler",
        "beat_schedule": beat_schedule(s),
        "beat_max_loop_interval": s.beat.max_loop_interval,
        "redbeat_redis_url": url,
        "redbeat_redis_options": {"socket_timeout": 30, "socket_connect_timeout": 10, "health_check_interval": 30},
        "redbeat_key_prefix": f"{s.redis.key_prefix}:redbeat:",
        "redbeat_lock_timeout": s.beat.lock_timeout,
        # rediss://: the server's certificate and host name verified against the system CAs (Celery refuses a
        # rediss:// URL without saying how to verify).
        **({"broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED},
            "redis_backend_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED},
            "redbeat_redis_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}} if url.startswith("rediss://") else {}),
    }
    config.update(sentinel)
    return config


def create_app(s: Settings | None = None) -> Celery:
    """The Celery app; configured from ``s``, or, without it, from ``get_settings()`` when first used.

    Building the app reads nothing: like Celery's own ``Task.bind()``, the
    configuration is applied lazily (``add_defaults`` with a callable), so
    importing ``workers.app`` or any ``tasks`` module needs no config file.
    """
    celery_app = Celery("mediation_backup")
    if s is not None:
        celery_app.conf.update(celery_config(s))
    else:
        celery_app.add_defaults(lambda: celery_config(get_settings()))
    return celery_app


app = create_app()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _setup_logging(logger, *args, **kwargs):
    from workers import logctx

    logctx.configure(logger, get_settings().log_format)


@task_prerun.connect
def _bind_log_context(task_id=None, task=None, args=None, kwargs=None, **_):
    from workers import logctx

    payload = (args or [None])[0]
    job_id = payload.get("job_id") if isinstance(payload, dict) else task_id
    logctx.bind(job_id, getattr(task, "phase_name", None) or (task.name if task else None))

