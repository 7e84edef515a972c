"""The schedules section: validation at load, cron in a timezone (DST), the beat schedule built from it."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest

from base.errors import ConfigError
from config.schedule import STALL_CHECK_ENTRY, beat_schedule, next_fires, parse_cron
from config.settings import load_settings
from tests.conftest import write_config

UTC = dt.timezone.utc


def _entry(**kw) -> dict:
    return {"name": "nightly", "workflow": "edge-export", "cron": "30 2 * * *", "timezone": "Europe/Rome",
            "kwargs": {"table": "mnaas.customer_traffic"}, **kw}


def _load(tmp_path, *entries, **extra):
    return load_settings(write_config(tmp_path / "c.yaml", {"schedules": list(entries), **extra}))


def test_valid_schedule_builds_beat_entries(tmp_path):
    s = _load(tmp_path, _entry(), _entry(name="off", enabled=False))
    sched = beat_schedule(s)
    assert list(sched) == ["nightly", STALL_CHECK_ENTRY]
    assert sched[STALL_CHECK_ENTRY]["task"] == "backup.stall_check"
    entry = sched["nightly"]
    assert entry["task"] == "backup.edge_export"
    assert entry["kwargs"] == {"table": "mnaas.customer_traffic"}
    assert entry["schedule"] == parse_cron("30 2 * * *", "Europe/Rome")
    assert entry["schedule"] != parse_cron("30 2 * * *", "UTC")


@pytest.mark.parametrize("change, message", [
    ({"cron": "61 * * * *"}, "schedules[nightly].cron: bad cron expression '61 * * * *'"),
    ({"cron": "0 2 * *"}, "schedules[nightly].cron: cron expression '0 2 * *' must have 5 fields"),
    ({"cron": "0 2 31 2 *"}, "schedules[nightly].cron: bad cron expression '0 2 31 2 *'"),
    ({"timezone": "Europe/Atlantis"}, "schedules[nightly].timezone: unknown timezone 'Europe/Atlantis'"),
    ({"workflow": "edge-exprot"}, "schedules[nightly].workflow: unknown workflow 'edge-exprot'"),
    ({"kwargs": {"bad-name": 1}}, "schedules[nightly].kwargs: not a keyword argument name: 'bad-name'"),
])
def test_bad_entry_is_a_config_error_naming_it(tmp_path, change, message):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, _entry(**change))
    assert message in str(e.value)
    assert "\n" not in e.value.one_line()


def test_duplicate_names_and_unknown_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"schedules\[nightly\]: duplicate schedule name"):
        _load(tmp_path, _entry(), _entry(cron="0 3 * * *"))
    with pytest.raises(ConfigError, match=r"schedules\.0\.crontab: unknown key"):
        _load(tmp_path, {**_entry(), "crontab": "* * * * *"})


def test_beat_lock_must_outlive_several_loops(tmp_path):
    with pytest.raises(ConfigError, match="beat.lock_timeout must be at least 3 x beat.max_loop_interval"):
        _load(tmp_path, beat={"lock_timeout": 20, "max_loop_interval": 10})
    assert _load(tmp_path, beat={"lock_timeout": 60, "max_loop_interval": 10}).beat.lock_timeout == 60


def test_next_fires_follow_the_entry_timezone_across_dst():
    # Europe/Rome: CET (+1) in winter, CEST (+2) from 2026-03-29 to 2026-10-25.
    winter = next_fires("0 2 * * *", "Europe/Rome", dt.datetime(2026, 1, 15, 0, 0, tzinfo=UTC), 2)
    assert [t.astimezone(UTC).hour for t in winter] == [1, 1]
    spring = next_fires("30 1 * * *", "Europe/Rome", dt.datetime(2026, 3, 27, 12, 0, tzinfo=UTC), 4)
    assert [t.isoformat() for t in spring] == ["2026-03-28T01:30:00+01:00", "2026-03-29T01:30:00+01:00",
                                               "2026-03-30T01:30:00+02:00", "2026-03-31T01:30:00+02:00"]
    autumn = next_fires("30 4 * * *", "Europe/Rome", dt.datetime(2026, 10, 24, 12, 0, tzinfo=UTC), 2)
    assert [t.isoformat() for t in autumn] == ["2026-10-25T04:30:00+01:00", "2026-10-26T04:30:00+01:00"]
    minutes = next_fires("* * * * *", "UTC", dt.datetime(2026, 10, 23, 12, 0, 30, tzinfo=UTC), 3)
    assert [t.minute for t in minutes] == [1, 2, 3] and all(t.second == 0 for t in minutes)
    weekdays = next_fires("15 6 * * 1-5", "America/New_York", dt.datetime(2026, 10, 23, 12, 0, tzinfo=UTC), 2)
    assert [t.date().isoformat() for t in weekdays] == ["2026-10-26", "2026-10-27"]  # Friday 08:00 local → Monday


def test_zoned_crontab_survives_pickling_with_its_timezone():
    cron = parse_cron("5 4 * * *", "Asia/Tokyo")
    back = pickle.loads(pickle.dumps(cron))
    assert back == cron and back.timezone == "Asia/Tokyo"



def test_restore_drills_are_scheduled_like_any_run(tmp_path):
    s = _load(tmp_path, _entry(name="weekly-drill", workflow="restore-drill", cron="0 4 * * 0",
                               kwargs={"target": "edge-export:mnaas.customer_traffic"}),
              _entry(name="all-drills", workflow="restore-drill", cron="0 5 * * 0", kwargs={}),
              restore_drill={"targets": ["edge-export:mnaas.customer_traffic", "customer-files:acme"]})
    sched = beat_schedule(s)
    assert sched["weekly-drill"]["task"] == sched["all-drills"]["task"] == "backup.restore_drill"
    assert sched["weekly-drill"]["kwargs"] == {"target": "edge-export:mnaas.customer_traffic"}
