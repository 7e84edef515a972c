"""restore-table-backup requests and the recorded counts' format: checked before anything runs, no service needed."""

from __future__ import annotations

import re

import pytest

from base.errors import FatalError, InvalidInput
from backup.resources import Resources
from backup.restore_table_backup import DEFINITION, check_version, restore_names, validate_request
from backup.table_backup.catalog import format_partition_rows, month_counts, parse_partition_rows

JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def res(settings):
    return Resources(settings)  # clients are lazy: nothing here connects anywhere


def test_request_normalized_and_names_derived(res):
    args = validate_request(res, "mnaas.Traffic", into="scratch.t1", version="2026-01-02", job_id=JOB)
    assert args == {"table": "mnaas.Traffic", "into": "scratch.t1", "replace": False, "replace_live": False,
                    "version": "20260102", "keep_partition_columns": False, "suffix": "_bkp",
                    "backup_table": "mnaas.Traffic_bkp_20260102", "target": "scratch.t1"}
    names = restore_names("mnaas.Traffic", "_bkp", None, None, JOB)  # --replace-live: the live table is the target
    assert (str(names.target), str(names.view)) == ("mnaas.Traffic", "mnaas.Traffic_bkp")
    # sha256(JOB)[:12], as table-backup's tag: never one of table-backup's data-table names (12 characters after __).
    assert (str(names.staging), str(names.replaced)) == ("mnaas.Traffic__restore_3eb1bd439947",
                                                         "mnaas.Traffic__replaced_3eb1bd439947")
    assert validate_request(res, "db.t", replace_live=True)["target"] == "db.t"
    assert validate_request(res, "db.t", into="db." + "x" * 97)["target"] == "db." + "x" * 97  # the longest name


def test_each_start_of_a_load_gets_a_staging_table_of_its_own():
    from backup.staging import delivery_table, SUFFIX_LENGTH

    base = restore_names("mnaas.Traffic", "_bkp", None, "db." + "x" * 97, JOB).staging
    names = {delivery_table(base) for _ in range(50)}
    assert len(names) == 50
    assert all(n.db == "db" and re.fullmatch(re.escape(base.table) + "_[0-9a-f]{8}", n.table) for n in names)
    assert all(len(n.table) == len(base.table) + SUFFIX_LENGTH <= 128 for n in names)


@pytest.mark.parametrize("kwargs, message", [
    ({"into": "db.x", "replace_live": True}, "--into and --replace-live exclude each other"),
    ({}, "say where to restore"),
    ({"replace_live": True, "replace": True}, "--replace applies to --into"),
    ({"replace_live": True, "keep_partition_columns": True}, "cannot go with --replace-live"),
    ({"into": "DB.T"}, "--into names the live table db.t"),
    ({"into": "db.t_bkp"}, "names a table-backup object"),
    ({"into": "db.T_bkp_20260101"}, "names a table-backup object"),
    ({"into": "db.t_bkp_rejects"}, "names a table-backup object"),
    ({"into": "db.t_bkp__0123456789ab"}, "names a table-backup object"),
    ({"into": "db.x", "version": "20260230"}, "invalid version '20260230'"),
    ({"into": "db.x", "version": "2026-1-2"}, "invalid version"),
    ({"into": "db.x", "replace": 1}, "invalid replace flag"),
    ({"into": "db.x", "suffix": "_b-k"}, "invalid backup suffix"),
    ({"into": "x"}, "invalid table name 'x'"),
    ({"into": "db." + "x" * 120}, "invalid staging table name"),
    # The base name fits (122 characters); a load delivery's own table (9 more, backup.staging) would not.
    ({"into": "db." + "x" * 100}, "invalid staging table name"),
])
def test_bad_requests(res, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        validate_request(res, "db.t", **kwargs)


def test_other_names_are_not_backup_objects(res):
    for into in ("db.t_bkp_restored", "db.t_bkp2", "other.t_bkp", "db.t2"):
        assert validate_request(res, "db.t", into=into)["target"] == into


def test_versions_accepted():
    assert check_version(None) is None
    assert check_version("20240229") == check_version("2024-02-29") == check_version(20240229) == "20240229"


def test_recorded_counts_round_trip():
    counts = month_counts([(2025, 9, 140), (2025, 10, 155), (2025, 9, 1)])
    assert counts == {"2025-09": 141, "2025-10": 155}
    assert format_partition_rows(counts) == "2025-09:141,2025-10:155"
    assert parse_partition_rows("2025-09:141,2025-10:155") == counts
    assert parse_partition_rows("") == {}
    assert parse_partition_rows("2025-09:141;2025-10:x") is None  # damaged: the restore refuses it
    assert month_counts([(None, None, 3)]) == {"NULL": 3}
    with pytest.raises(FatalError):
        format_partition_rows({"NULL": 3})


def test_the_cli_command_and_the_lock():
    assert DEFINITION.command == "restore table-backup"
    assert [p.queue for p in DEFINITION.phases] == ["spark"] * 5
