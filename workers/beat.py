"""celery beat for the scheduled runs: ``backupctl beat``.

The schedule comes from the ``schedules`` section of the config
(config/schedule.py) and is served by celery-redbeat, which keeps it in Redis
under ``<prefix>:redbeat:`` and guards it with a Redis lock: only the beat
holding ``<prefix>:redbeat::lock`` fires anything.  A second beat started by
mistake (or on purpose, as a standby) waits on the lock and takes over once
the active one stops renewing it: at most ``beat.lock_timeout +
beat.max_loop_interval`` seconds after it died (50 + 10 by default, about a
minute; redbeat's own default is 25 minutes).

redbeat stores each entry's schedule as JSON without its timezone, so the
entries read back from Redis get their schedule (with timezone) from the
config again; Redis keeps only the run bookkeeping (last run, next due time).

``backupctl beat --check`` is the container healthcheck: it exits 0 when
Redis answers and some beat holds the lock.
"""

from __future__ import annotations

from redbeat import RedBeatScheduler
from redbeat.schedulers import RedBeatSchedulerEntry


class ConfiguredEntry(RedBeatSchedulerEntry):
    """A redbeat entry whose schedule (with its timezone) always comes from the config."""

    @classmethod
    def from_key(cls, key, app=None):
        entry = super().from_key(key, app=app)
        configured = (app.conf.beat_schedule or {}).get(entry.name) if app is not None else None
        if configured is not None:
            entry.schedule = configured["schedule"]
        return entry


class ConfiguredRedBeatScheduler(RedBeatScheduler):
    """RedBeatScheduler (single active beat through the Redis lock) with timezone-aware config entries."""

    Entry = ConfiguredEntry


def lock_holder_present(app) -> bool:
    """True if some beat holds the redbeat lock (Redis errors propagate)."""
    from redbeat.schedulers import ensure_conf, get_redis

    conf = ensure_conf(app)
    return bool(get_redis(app).exists(conf.lock_key))


def run(loglevel: str = "INFO") -> None:
    """Run celery beat in the foreground with the app's redbeat settings."""
    from workers.app import app

    app.start(["beat", "--loglevel", loglevel])
