"""The beat schedule, built from the ``schedules`` section of the config.

Each entry names a registered workflow (``config.workflows``), a five-field cron expression read in its own
IANA timezone, and the keyword arguments of the workflow's entry task::

    schedules:
      - name: traffic-nightly
        workflow: edge-export
        cron: "30 2 * * *"
        timezone: Europe/Rome
        kwargs: {table: mnaas.customer_traffic}

Entries are checked when the config is loaded (``check_schedules``): a bad
cron expression, timezone, workflow or duplicate name is a ConfigError naming
the entry.  ``beat_schedule`` turns them into Celery's ``beat_schedule``;
``next_fires`` answers ``backupctl schedule``.
"""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab

from base.errors import ConfigError
from config.workflows import workflow_tasks


class ZonedCrontab(crontab):
    """A crontab read in its own timezone instead of the app's (DST-aware through zoneinfo)."""

    def __init__(self, minute="*", hour="*", day_of_week="*", day_of_month="*", month_of_year="*",
                 timezone: str = "UTC", **kwargs):
        super().__init__(minute, hour, day_of_week, day_of_month, month_of_year, **kwargs)
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)

    @property
    def tz(self):
        return self.zone

    def __reduce__(self):
        return (_zoned, (self._orig_minute, self._orig_hour, self._orig_day_of_week, self._orig_day_of_month,
                         self._orig_month_of_year, self.timezone))

    def __repr__(self) -> str:
        return f"<crontab {self.expression} {self.timezone}>"

    @property
    def expression(self) -> str:
        """The five cron fields as written."""
        return " ".join(str(f) for f in (self._orig_minute, self._orig_hour, self._orig_day_of_month,
                                         self._orig_month_of_year, self._orig_day_of_week))

    def __eq__(self, other):
        if isinstance(other, ZonedCrontab):
            return super().__eq__(other) and other.timezone == self.timezone
        return NotImplemented


def _zoned(minute, hour, day_of_week, day_of_month, month_of_year, timezone):
    return ZonedCrontab(minute, hour, day_of_week, day_of_month, month_of_year, timezone=timezone)


def parse_cron(expr: str, timezone: str = "UTC", nowfun=None) -> ZonedCrontab:
    """``minute hour day-of-month month day-of-week`` in ``timezone``; ValueError naming the problem."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expr!r} must have 5 fields (minute hour day-of-month month "
                         f"day-of-week), got {len(fields)}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown timezone {timezone!r}") from e
    minute, hour, dom, month, dow = fields
    try:
        return ZonedCrontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow,
                            timezone=timezone, nowfun=nowfun)
    except Exception as e:  # celery raises ParseException, ValueError or TypeError for bad fields
        raise ValueError(f"bad cron expression {expr!r}: {' '.join(str(e).split())}") from e


#: beat entry of the stall check (backup/stalls.py), present in every schedule; no config entry may take the name
STALL_CHECK_ENTRY = "stall-check"


def _request_problem(workflow: str, kwargs: dict) -> str | None:
    """What is wrong with the argument names of a scheduled request (unknown, missing), or None."""
    from backup.workflow import definition  # here: the declarations import the settings module

    params = definition(workflow).request_signature().parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        return f"unknown argument {unknown[0]!r} of {workflow} (accepted: {', '.join(params)})"
    missing = [name for name, p in params.items() if p.default is p.empty and name not in kwargs]
    if missing:
        return f"{workflow} needs the argument {missing[0]!r}"
    return None


def check_schedules(settings, source: str = "config") -> None:
    """Validate every schedule entry; ConfigError naming the entry and the problem."""
    seen = set()
    tasks = workflow_tasks()
    for entry in settings.schedules:
        where = f"{source}: schedules[{entry.name}]"
        if entry.name == STALL_CHECK_ENTRY:
            raise ConfigError(f"{where}: the name {STALL_CHECK_ENTRY!r} is reserved for the built-in stall check")
        if entry.name in seen:
            raise ConfigError(f"{where}: duplicate schedule name")
        seen.add(entry.name)
        if entry.workflow not in tasks:
            raise ConfigError(f"{where}.workflow: unknown workflow {entry.workflow!r} "
                              f"(known: {', '.join(sorted(tasks))})")
        try:
            parse_cron(entry.cron, entry.timezone)
        except ValueError as e:
            field = "timezone" if "timezone" in str(e) else "cron"
            raise ConfigError(f"{where}.{field}: {e}") from e
        bad = [k for k in entry.kwargs if not k.isidentifier()]
        if bad:
            raise ConfigError(f"{where}.kwargs: not a keyword argument name: {bad[0]!r}")
        problem = _request_problem(entry.workflow, entry.kwargs)
        if problem:  # at load, not at the first firing (which would fail every night until someone looked)
            raise ConfigError(f"{where}.kwargs: {problem}")
        try:
            json.dumps(entry.kwargs)
        except TypeError as e:
            raise ConfigError(f"{where}.kwargs: values must be JSON (str, number, bool, list, mapping): {e}") from e


def beat_schedule(settings) -> dict[str, dict]:
    """Celery's ``beat_schedule``: the enabled entries, and the stall check every ``stall.check_every`` seconds."""
    from celery.schedules import schedule

    tasks = workflow_tasks()
    entries = {
        e.name: {"task": tasks[e.workflow], "schedule": parse_cron(e.cron, e.timezone), "kwargs": dict(e.kwargs)}
        for e in settings.schedules if e.enabled
    }
    entries[STALL_CHECK_ENTRY] = {"task": "backup.stall_check",
                                  "schedule": schedule(dt.timedelta(seconds=settings.stall.check_every))}
    return entries


def next_fires(expr: str, timezone: str, after: dt.datetime, count: int = 1) -> list[dt.datetime]:
    """The next ``count`` fire times strictly after ``after`` (aware datetimes in the entry's timezone)."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    out = []
    t = after
    for _ in range(count):
        sched = parse_cron(expr, timezone, nowfun=lambda t=t: t)
        # In UTC: an aware datetime plus a timedelta moves its wall clock, which is off by the DST shift.
        t = (t.astimezone(dt.timezone.utc) + sched.remaining_estimate(t)).astimezone(sched.zone)
        out.append(t)
    return out
