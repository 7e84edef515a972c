"""table-backup requests: names, sources, options and settings are checked before anything runs."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from base.errors import ConfigError, FatalError, InvalidInput
from backup.resources import Resources
from backup.table_backup.names import check_source, job_tag, run_names, validate_request
from config.settings import load_settings
from tests.conftest import CONFIG_PATH, STATE, write_config

JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def res(settings):
    return Resources(settings)  # clients are lazy: nothing here connects anywhere


def test_default_names(res):
    args = validate_request(res, "mnaas.TrafficDetails", "/data/traffic", job_id=JOB)
    assert args == {"table": "mnaas.TrafficDetails", "source": "/data/traffic", "suffix": "_bkp", "versioned": False,
                    "retention": None, "day": None, "backup_table": "mnaas.TrafficDetails_bkp"}
    names = run_names("mnaas.TrafficDetails", "_bkp", None, JOB)
    # sha256(JOB)[:12], pinned: every phase of a job derives the same name (after its load, the recorded one).
    assert str(names.data) == "mnaas.TrafficDetails_bkp__3eb1bd439947"
    assert str(names.rejects) == "mnaas.TrafficDetails_bkp_rejects"
    pattern = names.data_pattern()
    assert pattern.match("trafficdetails_bkp__0123456789ab")
    assert not pattern.match("trafficdetails_bkp_20260101__0123456789ab")  # a versioned backup's data table
    assert not pattern.match("trafficdetails_bkp_rejects")


def test_versioned_names_default_day_and_retention(res, settings):
    args = validate_request(res, "db.t", "hdfs:///landing/t", versioned=True, job_id=JOB)
    assert args["day"] == dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    assert args["retention"] == settings.table_backup.retention
    args = validate_request(res, "db.t", "/x", suffix="_copy", versioned=True, retention="3", day="2026-02-28",
                            job_id=JOB)
    assert (args["backup_table"], args["retention"], args["day"]) == ("db.t_copy_20260228", 3, "20260228")
    names = run_names("db.t", "_copy", "20260228", JOB)
    assert str(names.data) == "db.t_copy_20260228__3eb1bd439947"
    assert str(names.rejects) == "db.t_copy_20260228_rejects"


@pytest.mark.parametrize("kwargs, message", [
    ({"table": "x; DROP TABLE y"}, "invalid table name"),
    ({"table": "a.b.c"}, "expected exactly 'db.table'"),
    ({"table": "db.1t"}, "invalid table name"),
    ({"suffix": "_bkp;--"}, "invalid backup suffix"),
    ({"suffix": ""}, "invalid backup suffix"),
    ({"versioned": "yes"}, "invalid versioned flag"),
    ({"retention": 2}, "versioned backups only"),
    ({"day": "2026-01-01"}, "versioned backups only"),
    ({"versioned": True, "retention": 0}, "invalid retention"),
    ({"versioned": True, "retention": True}, "invalid retention"),
    ({"versioned": True, "day": "2026-13-01"}, "invalid day"),
    ({"versioned": True, "day": "yesterday"}, "invalid day"),
    ({"table": "db." + "t" * 125}, "invalid backup table name"),
])
def test_bad_requests_name_the_problem(res, kwargs, message):
    req = {"table": "db.t", "source": "/data/in", **kwargs}
    with pytest.raises(InvalidInput, match=message) as e:
        validate_request(res, **req, job_id=JOB)
    assert "\n" not in e.value.one_line()


@pytest.mark.parametrize("source", ["/data/in", "/data/in/*.csv", "hdfs://nn:8020/landing/t", "s3a://bucket/p",
                                    "file:///tmp/x", "abfss://c@acct.dfs.core.windows.net/p"])
def test_sources_accepted(source):
    assert check_source(source) == source


@pytest.mark.parametrize("source, message", [
    (None, "missing source"), ("", "missing source"), ("  ", "missing source"),
    ("relative/dir", "absolute path"), ("ftp://host/x", "scheme 'ftp'"), ("/data/../etc", "'..'"),
    ("/data/in\nrm", "control characters"), ("/" + "a" * 5000, "longer than 4096"),
])
def test_sources_refused(source, message):
    with pytest.raises(InvalidInput, match=message):
        check_source(source)


def test_job_tag_is_a_hash_of_the_whole_id():
    """Caller-chosen ids sharing a long prefix get different data tables; the same id always the same one."""
    day1, day2 = job_tag("nightly-traffic-2026-01-01"), job_tag("nightly-traffic-2026-01-02")
    assert day1 != day2 and re.fullmatch(r"[0-9a-f]{12}", day1)
    assert job_tag("nightly-traffic-2026-01-01") == day1
    assert run_names("mnaas.t", "_bkp", None, "nightly-traffic-2026-01-01").data.table == f"t_bkp__{day1}"
    for bad in ["short-id", "x" * 65, "id with spaces!", None]:
        with pytest.raises(InvalidInput, match="invalid job id"):
            job_tag(bad)


def test_unknown_timezone_is_a_config_error_at_load(settings):
    cfg = write_config(STATE / "tb-tz.yaml", {"table_backup": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ConfigError, match="table_backup.*unknown timezone 'Mars/Olympus'"):
        load_settings(cfg)


@pytest.mark.parametrize("spark, message", [
    ({"remote": "http://host:15002"}, "spark.remote"),
    ({"remote": "sc://host:15002/;token=abc"}, "must not carry a token"),
    ({"session_conf": {"spark.executor.memory": "4g"}}, "only spark.sql"),
    ({"client_retries": -1}, "spark.client_retries"),
])
def test_spark_settings_validated(spark, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(CONFIG_PATH, overrides={"spark": spark})


@pytest.mark.parametrize("table_backup, message", [
    ({"suffix": "_bkp-x"}, "table_backup.suffix"),
    ({"max_reject_ratio": 1.5}, "table_backup.max_reject_ratio"),
    ({"delimiter": ";;"}, "table_backup.delimiter"),
    ({"retention": 0}, "table_backup.retention"),
    ({"unknown": 1}, "unknown key"),
])
def test_table_backup_settings_validated(table_backup, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(CONFIG_PATH, overrides={"table_backup": table_backup})


def test_a_partition_column_setting_changed_after_validate_is_a_config_error(settings):
    """The load reads the schema validate recorded; a setting naming another column is one clear line."""
    from pyspark.sql.types import StringType, StructField, StructType

    from backup.table_backup.columns import partition_field

    schema = StructType([StructField("id", StringType()), StructField("partition_date", StringType())])
    assert partition_field(schema, settings.table_backup).name == "partition_date"
    cfg = settings.table_backup.model_copy(update={"partition_column": "event_day"})
    with pytest.raises(ConfigError, match=r"partition_column='event_day' is not a column .*\(id, partition_date\)"):
        partition_field(schema, cfg)


def test_a_data_table_recorded_by_the_load_is_kept_by_the_later_phases():
    """A job whose load ran on a version that derived the tag otherwise finds its table in the write."""
    from backup.table_backup.names import names_of

    rec = {"job_id": JOB, "args": {"table": "mnaas.t", "suffix": "_bkp", "day": None}, "outputs": {}}
    assert str(names_of(rec).data) == "mnaas.t_bkp__3eb1bd439947"
    rec["outputs"]["data_table"] = "mnaas.t_bkp__0123456789ab"  # the earlier prefix tag
    assert str(names_of(rec).data) == "mnaas.t_bkp__0123456789ab"
    for foreign in ("other.t_bkp__0123456789ab", "mnaas.t_bkp", "mnaas.u_bkp__0123456789ab"):
        rec["outputs"]["data_table"] = foreign
        with pytest.raises(FatalError, match="not a data table of mnaas.t_bkp"):
            names_of(rec)


def test_a_job_id_with_a_trailing_newline_is_refused():
    with pytest.raises(InvalidInput, match="invalid job id"):
        job_tag(JOB + "\n")


class _SparkError(Exception):
    pass


@pytest.mark.parametrize("message, malformed", [
    ("[MALFORMED_RECORD_IN_PARSING.WITHOUT_SUGGESTION] Malformed records are detected in record parsing", True),
    ("[MALFORMED_CSV_RECORD] Malformed CSV record: 1;2", True),
    ("[TASK_WRITE_FAILED] Task failed while writing rows to file:/warehouse/t", False),
    ("[TABLE_OR_VIEW_NOT_FOUND] The table or view `db`.`t` cannot be found", False),
])
def test_only_a_malformed_record_sends_a_failed_strict_read_to_the_exact_path(message, malformed):
    """The marker is looked for along the cause chain, where spark_errors keeps the Spark error."""
    from backup.table_backup import stopped_at_malformed_record

    try:
        try:
            raise _SparkError(f"{message}\n\nJVM stacktrace: ...")
        except _SparkError as e:
            raise FatalError("load /in into db.t_bkp__x: job aborted") from e
    except FatalError as ours:
        assert stopped_at_malformed_record(ours) is malformed
