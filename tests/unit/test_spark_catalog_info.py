"""Reading SHOW TABLE EXTENDED's ``information`` text (the real text is read back in the table-backup tests)."""

from __future__ import annotations

import pytest

from connectors.spark import parse_table_information, tables_like

# As Spark 4.3 prints it for a view made by table-backup (shortened).
VIEW_INFO = """Catalog: spark_catalog
Database: mnaas
Table: traffic_bkp
Type: VIEW
View Text: SELECT `id`, `partition_date` FROM `mnaas`.`traffic_bkp__6e7472960b9d`
View Query Output Columns: [`id`, `partition_date`]
Table Properties: [mediation_backup.data_table=traffic_bkp__6e7472960b9d, mediation_backup.job_id=6e74, \
mediation_backup.rows=2000000, transient_lastDdlTime=1796151263]
Schema: root
 |-- id: long (nullable = true)
 |-- partition_date: string (nullable = true)
"""


def test_type_and_properties_of_a_view():
    info = parse_table_information(VIEW_INFO)
    assert info["type"] == "VIEW"
    assert info["properties"] == {"mediation_backup.data_table": "traffic_bkp__6e7472960b9d",
                                  "mediation_backup.job_id": "6e74", "mediation_backup.rows": "2000000",
                                  "transient_lastDdlTime": "1796151263"}
    assert info["view_text"] == "SELECT `id`, `partition_date` FROM `mnaas`.`traffic_bkp__6e7472960b9d`"


def test_a_value_holding_a_comma_stays_whole_and_a_table_without_properties_has_none():
    info = parse_table_information("Type: MANAGED\nTable Properties: [comment=a, b and c, owner.team=ops]\n")
    assert info == {"type": "MANAGED", "properties": {"comment": "a, b and c", "owner.team": "ops"}, "view_text": ""}
    assert parse_table_information("Type: EXTERNAL\nProvider: parquet\n") == {"type": "EXTERNAL", "properties": {},
                                                                             "view_text": ""}


def test_the_first_line_of_a_key_counts():
    """A view's SQL text (which may span lines) comes after its Type and cannot override it."""
    text = "Type: VIEW\nView Text: SELECT 1\nType: MANAGED\nTable Properties: [a=1]\nTable Properties: [a=2]\n"
    assert parse_table_information(text) == {"type": "VIEW", "properties": {"a": "1"}, "view_text": "SELECT 1"}


def test_a_view_text_over_several_lines_ends_at_the_next_key():
    """As Spark prints a view altered by hand: its SQL over three lines, then the next key."""
    text = ("Type: VIEW\nView Text: SELECT *\n  FROM mnaas.T_BKP__0123456789AB\nwhere 1 = 1\n"
            "View Original Text: SELECT *\nTable Properties: [mediation_backup.data_table=t_bkp__ba9876543210]\n")
    info = parse_table_information(text)
    assert info["view_text"] == "SELECT *\n  FROM mnaas.T_BKP__0123456789AB\nwhere 1 = 1"
    assert info["properties"] == {"mediation_backup.data_table": "t_bkp__ba9876543210"}


@pytest.mark.parametrize("like", ["x'; DROP TABLE y; --", "a b", "t%"])
def test_unsafe_patterns_are_refused_before_any_query(like):
    with pytest.raises(ValueError, match="unsafe SHOW TABLES pattern"):
        tables_like(None, "db", like)


def test_a_comment_line_like_a_key_stays_in_the_view_text():
    """A hand-written ALTER VIEW may hold 'Reason: ...' in a comment; Spark's next key ends the text."""
    text = ("Type: VIEW\nView Text: SELECT *\n/* rollback\nReason: bad load */ FROM mnaas.t_bkp__0123456789ab\n"
            "View Original Text: SELECT *\n/* rollback\nReason: bad load */ FROM mnaas.t_bkp__0123456789ab\n"
            "Table Properties: [mediation_backup.data_table=t_bkp__ba9876543210]\n")
    info = parse_table_information(text)
    assert info["view_text"] == "SELECT *\n/* rollback\nReason: bad load */ FROM mnaas.t_bkp__0123456789ab"
    assert info["properties"] == {"mediation_backup.data_table": "t_bkp__ba9876543210"}
