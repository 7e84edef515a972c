"""Errors, SQL identifiers and the export window: pure functions."""

from __future__ import annotations

import datetime as dt
import errno
import socket

import pytest

from base.errors import (BackupError, ConnectionFailed, FatalError, InvalidInput, RetryableError, classify)
from base.identifiers import TableName, identifier
from backup.window import Window, add_months, export_window


def test_families_and_one_line():
    assert issubclass(ConnectionFailed, RetryableError) and ConnectionFailed("x").retryable
    assert not InvalidInput("x").retryable and issubclass(InvalidInput, FatalError)
    assert InvalidInput("bad\n  name").one_line() == "InvalidInput: bad name"


@pytest.mark.parametrize("exc,family", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), ConnectionFailed),
    (ConnectionResetError(errno.ECONNRESET, "reset"), ConnectionFailed),
    (socket.timeout("timed out"), ConnectionFailed),
    (OSError(errno.ECONNREFUSED, "refused"), ConnectionFailed),
    (OSError(errno.ENOSPC, "disk full"), FatalError),
    (ValueError("boom"), FatalError),
])
def test_classify(exc, family):
    out = classify(exc, "thing")
    assert type(out) is family and out.one_line().startswith(f"{family.__name__}: thing:")


def test_classify_passes_ours_through():
    e = InvalidInput("x")
    assert classify(e, "y") is e
    assert isinstance(classify(BackupError("z"), "w"), BackupError)


@pytest.mark.parametrize("text", ["x; DROP TABLE y", "a.b.c", "../etc", "db.", ".t", "db.1t", "db.t`x", "db.t x",
                                  "db.t-x", "", "db.ü"])
def test_table_names_refused(text):
    with pytest.raises(InvalidInput, match="invalid"):
        TableName.parse(text)


def test_table_name_ok_and_quoted():
    t = TableName.parse("mnaas.customer_traffic_2")
    assert (t.db, t.table, t.sql, str(t)) == ("mnaas", "customer_traffic_2", "`mnaas`.`customer_traffic_2`",
                                              "mnaas.customer_traffic_2")
    with pytest.raises(InvalidInput):
        identifier("a" * 129)
    with pytest.raises(InvalidInput):
        TableName.parse(None)  # type: ignore[arg-type]


def test_default_window_is_last_full_months():
    w = export_window(5, None, "UTC", today=dt.date(2026, 11, 25))
    assert (w.start, w.end) == (dt.date(2026, 6, 1), dt.date(2026, 11, 1))
    assert w.label == "20260601-20261101"
    w = export_window(5, None, "UTC", today=dt.date(2026, 2, 1))
    assert (w.start, w.end) == (dt.date(2025, 9, 1), dt.date(2026, 2, 1))


def test_window_end_override_and_clamping():
    assert export_window(1, "2026-03-31", "UTC") == Window(dt.date(2026, 2, 28), dt.date(2026, 3, 31))
    assert add_months(dt.date(2024, 5, 31), -3) == dt.date(2024, 2, 29)
    assert add_months(dt.date(2026, 1, 15), 13) == dt.date(2027, 2, 15)


@pytest.mark.parametrize("months,end", [(0, None), (121, None), ("5", None), (True, None), (5, "2026-13-01"),
                                        (5, "yesterday")])
def test_window_bad_input(months, end):
    with pytest.raises(InvalidInput):
        export_window(months, end, "UTC")


def test_window_split_month_aligned():
    w = Window(dt.date(2026, 6, 1), dt.date(2026, 11, 1))
    parts = w.split(2)
    assert parts == [Window(dt.date(2026, 6, 1), dt.date(2026, 9, 1)), Window(dt.date(2026, 9, 1), dt.date(2026, 11, 1))]
    assert w.split(1) == [w]
    assert len(w.split(16)) == 5
    odd = Window(dt.date(2026, 6, 15), dt.date(2026, 8, 10))
    pieces = odd.split(3)
    assert pieces[0].start == odd.start and pieces[-1].end == odd.end
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
