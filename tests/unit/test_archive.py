"""The streaming CSV+gzip writer: quoting, NULLs, counts and checksums in one pass."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io

import pytest

from backup.archive import CsvGzipWriter


def test_round_trip_and_checksums(tmp_path):
    p = tmp_path / "a.csv.gz"
    w = CsvGzipWriter(p)
    cols = [[1, 2, 3, 4], ["semi;colon", 'q"uote', "new\nline", None], ["é ✓", "", "crlf\r\nx", "plain"]]
    w.write_columns(cols)
    w.write_rows([(5, None, None)])
    stats = w.close()
    data = p.read_bytes()
    assert stats == {"rows": 5, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    text = gzip.decompress(data).decode()
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    assert rows == [["1", "semi;colon", "é ✓"], ["2", 'q"uote', ""], ["3", "new\nline", "crlf\r\nx"],
                    ["4", "", "plain"], ["5", "", ""]]


def test_same_data_same_archive(tmp_path):
    digests = []
    for name in ("x.gz", "y.gz"):
        w = CsvGzipWriter(tmp_path / name)
        w.write_columns([[1, 2], ["a", "b"]])
        digests.append(w.close()["sha256"])
    assert digests[0] == digests[1]


def test_abort_leaves_nothing(tmp_path):
    p = tmp_path / "a.part"
    w = CsvGzipWriter(p)
    w.write_columns([[1], ["x"]])
    w.abort()
    assert not p.exists()


def test_appended_members_form_one_valid_gzip_hashed_in_one_pass(tmp_path):
    writers = [CsvGzipWriter(tmp_path / f"{i}.part") for i in range(3)]
    for i, w in enumerate(writers):
        w.write_columns([[i, i + 10], [f"r{i}", None]])
    for w in writers[1:]:
        w.close()
    stats = writers[0].close(append=[tmp_path / "1.part", tmp_path / "2.part"])
    data = (tmp_path / "0.part").read_bytes()
    assert stats == {"rows": 2, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert gzip.decompress(data).decode() == "0;r0\n10;\n1;r1\n11;\n2;r2\n12;\n"


# -- the Arrow formatter against the csv module, byte for byte ---------------------------------------------
#
# Both sides start from the same wire data: a TRowSet as HiveServer2 sends it, read by impyla's own CBatch
# with the export's cursor settings.  Today's path: convert_types=False (strings decoded by impyla), NULLs
# made None as HiveClient.stream_columns does, the csv module.  The Arrow path: both conversions off,
# backup.archive.format_batch.

import math
import random
import struct

from impala._thrift_gen.TCLIService.ttypes import (TBinaryColumn, TBoolColumn, TByteColumn, TColumn, TDoubleColumn,
                                                   TI16Column, TI32Column, TI64Column, TRowSet, TStringColumn)
from impala.hiveserver2 import CBatch

from backup.archive import format_batch
from connectors.hive import RawColumn

_WIRE = {"BOOLEAN": ("boolVal", TBoolColumn, False), "TINYINT": ("byteVal", TByteColumn, 0),
         "SMALLINT": ("i16Val", TI16Column, 0), "INT": ("i32Val", TI32Column, 0), "BIGINT": ("i64Val", TI64Column, 0),
         "FLOAT": ("doubleVal", TDoubleColumn, 0.0), "DOUBLE": ("doubleVal", TDoubleColumn, 0.0),
         "BINARY": ("binaryVal", TBinaryColumn, b"")}


def _wire_batch(columns: list[tuple[str, list]], decode: bool) -> CBatch:
    """impyla's batch for ``columns`` (type name, values; None = NULL), as the server would send them."""
    tcols, schema = [], []
    for i, (kind, values) in enumerate(columns):
        field, cls, filler = _WIRE.get(kind, ("stringVal", TStringColumn, b""))
        nulls = bytearray((len(values) + 7) // 8)
        wire = []
        for j, v in enumerate(values):
            if v is None:
                nulls[j >> 3] |= 1 << (j & 7)
                v = filler
            elif isinstance(v, str):
                v = v.encode("utf-8")
            wire.append(v)
        tcols.append(TColumn(**{field: cls(values=wire, nulls=bytes(nulls))}))
        schema.append((f"c{i}", kind, None, None, None, None, None))
    return CBatch(TRowSet(startRowOffset=0, rows=[], columns=tcols), False, schema, convert_types=False,
                  convert_strings_to_unicode=decode)


def _today(columns) -> tuple[bytes, bytes]:
    """The CSV text and the archive of today's path."""
    cols = []
    for c in _wire_batch(columns, decode=True).columns:
        values = c.values
        if c.nulls.any():
            values = [None if n else v for v, n in zip(values, c.nulls)]
        cols.append(values)
    buf = io.BytesIO()
    w = CsvGzipWriter.__new__(CsvGzipWriter)  # only the formatting: the same csv writer settings
    w._buf = io.StringIO()
    w._csv = csv.writer(w._buf, delimiter=";", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    w._csv.writerows(zip(*cols))
    buf.write(w._buf.getvalue().encode("utf-8"))
    return buf.getvalue(), cols


def _arrow(columns) -> bytes:
    batch = _wire_batch(columns, decode=False)
    return bytes(format_batch([RawColumn(c.data_type, c.values, c.nulls.tobytes()) for c in batch.columns]))


TRICKY_TEXT = ["plain", "semi;colon", 'say "hi"', '"', '""', ";", "two\nlines", "crlf\r\nline", "cr\ronly", "\r",
               "\n", "", None, "Nørd Ørbit ✓ 日本", "emoji 😀", "tab\tx", " lead and trail ", "nul\x00byte",
               "b'looks like bytes'", "quote at end\"", "\u2028line sep", "'", "\\backslash\\", "x" * 3000]
TRICKY_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.1, 0.30000000000000004, 1e-4, 9.999999999999999e-05, 1e-05, 1.5e-07,
                 5e-324, 2.2250738585072014e-308, 1e10, 9999999999.999998, 9999999999.0, 1e15, 1e16, 1e17,
                 123456789012345.6, 1.7976931348623157e308, -1.7976931348623157e308, math.nan, math.inf, -math.inf,
                 1234.5678, -99.5, 3.4028234663852886e38, 0.10000000149011612, None]


def _tricky_table() -> list[tuple[str, list]]:
    n = max(len(TRICKY_TEXT), len(TRICKY_FLOATS)) * 2

    def cycle(values):
        return [values[i % len(values)] for i in range(n)]

    return [
        ("BIGINT", cycle([0, -1, 1, 2**63 - 1, -2**63, None, 42])),
        ("INT", cycle([2**31 - 1, -2**31, None, 7])), ("SMALLINT", cycle([-32768, 32767, None])),
        ("TINYINT", cycle([-128, 127, None, 0])),
        ("STRING", cycle(TRICKY_TEXT)), ("VARCHAR", cycle(list(reversed(TRICKY_TEXT)))),
        ("CHAR", cycle(["ab   ", None, ";  "])),
        ("DOUBLE", cycle(TRICKY_FLOATS)), ("FLOAT", cycle([0.10000000149011612, None, 3.4028234663852886e38, 1.0])),
        ("BOOLEAN", cycle([True, False, None])),
        ("TIMESTAMP", cycle(["2026-01-02 03:04:05", "2026-01-02 03:04:05.123456", "1970-01-01 00:00:00.1", None])),
        ("DATE", cycle(["2026-12-05", None, "0001-01-01"])),
        ("DECIMAL", cycle(["12345678901234567890.123456789", "-0.000000001", "1.50", None,
                           "99999999999999999999999999999999999999"])),
        ("MAP", cycle(['{"a":"b;"}', None, "{}"])), ("STRUCT", cycle(['{"x":1,"y":"q""}', None])),
        ("ARRAY", cycle(["[1,2]", None, '["a;b"]'])),
        ("BINARY", cycle([b"x;y", b"\xff\x00\n", None, b"", b'"'])),
        ("NULL", cycle([None])),
    ]


def test_arrow_formatter_writes_what_the_csv_module_writes_for_every_type():
    columns = _tricky_table()
    expected, cols = _today(columns)
    assert _arrow(columns) == expected
    # The table is tricky where it should be: today's text has quoted fields, NULLs, bytes as b'...'.
    text = expected.decode()
    assert '"say ""hi"""' in text and '"two\nlines"' in text and "cr\ronly" in text and ";;" in text
    assert "b'x;y'" in text and "b'[1,2]'" in text and "nan" in text and "-0.0" in text and "5e-324" in text
    assert any(v is None for v in cols[4]) and "" in cols[4]


@pytest.mark.parametrize("kind", sorted(set(_WIRE) | {"STRING", "TIMESTAMP", "DECIMAL", "DATE", "ARRAY"}))
def test_arrow_formatter_one_column_tables_quote_an_empty_row(kind):
    # The csv module writes a row of one empty field as "" (a blank line would be no row at all).
    sample = {"BOOLEAN": [None, True], "BINARY": [None, b"", b"a"], "FLOAT": [None, 1.5], "DOUBLE": [None, 2.0]}
    values = sample.get(kind, [None, "", "x"] if kind not in _WIRE else [None, 1])
    expected, _ = _today([(kind, values)])
    assert _arrow([(kind, values)]) == expected
    assert expected.startswith(b'""\n')


def test_arrow_formatter_keeps_text_that_is_not_utf8_as_impyla_does():
    # impyla leaves such a value as bytes; the csv module writes its repr.  Only that column takes the Python path.
    bad = [b"ok", b"\xff;bad", b"\xed\xa0\x80", None, "é".encode()]
    columns = [("STRING", bad), ("BIGINT", [1, 2, 3, None, 5])]
    expected, _ = _today(columns)
    assert b"b'\\xff;bad'" in expected
    assert _arrow(columns) == expected


def test_arrow_formatter_floats_match_repr_over_random_doubles():
    rng = random.Random(18)
    values = [struct.unpack("d", rng.randbytes(8))[0] for _ in range(20000)]
    for exp in range(-8, 18):
        values += [rng.choice((1, -1)) * rng.uniform(1, 10) * 10.0 ** exp for _ in range(400)]
        values += [round(rng.uniform(1, 10) * 10.0 ** exp, rng.randint(0, 6)) for _ in range(400)]
        values += [float(rng.randint(-10**6, 10**6)) * 10.0 ** exp for _ in range(100)]
    columns = [("DOUBLE", values + [None])]
    expected, _ = _today(columns)
    assert _arrow(columns) == expected


def test_batches_through_the_writer_make_the_same_archive_as_today(tmp_path):
    # The archive itself (gzip members, SHA-256) is the same bytes: chunks reach zlib as they did.
    columns = _tricky_table()
    _, cols = _today(columns)
    old, new = CsvGzipWriter(tmp_path / "old.gz"), CsvGzipWriter(tmp_path / "new.gz")
    for _ in range(3):
        old.write_columns(cols)
        batch = _wire_batch(columns, decode=False)
        new.write_batch([RawColumn(c.data_type, c.values, c.nulls.tobytes()) for c in batch.columns])
    a, b = old.close(), new.close()
    assert a == b and a["rows"] == 3 * len(cols[0])
    assert (tmp_path / "old.gz").read_bytes() == (tmp_path / "new.gz").read_bytes()


def test_a_failed_compression_is_raised_by_the_writer_and_abort_removes_the_file(tmp_path):
    p = tmp_path / "a.part"
    w = CsvGzipWriter(p)
    w._raw.close()  # every write into the file now fails, in the compression thread
    w.write_columns([[1], ["x"]])
    with pytest.raises(ValueError, match="closed file"):
        for _ in range(5):
            w.write_columns([[1], ["x"]])
        w.close()
    w.abort()
    assert not p.exists()


# -- lines the SQL engine formats (compared with the server in tests/integration/test_edge_export.py) ----------------

from backup.archive import NotText, SERVER_FIELDS, server_line_expression  # noqa: E402


def test_the_engine_writes_lines_only_for_verified_types_plain_names_and_two_columns_or_more():
    both = server_line_expression([("id", "BIGINT"), ("note", "STRING"), ("d", "DATE")])
    assert both.startswith("concat_ws(';', coalesce(CAST(`id` AS STRING), '')") and "`note`" in both
    assert server_line_expression([("id", "BIGINT"), ("amount", "DOUBLE")]) is None  # repr's layout, not Java's
    assert server_line_expression([("id", "BIGINT"), ("m", "MAP")]) is None
    assert server_line_expression([("id", "BIGINT"), ("x`; DROP TABLE t; --", "STRING")]) is None
    assert server_line_expression([("note", "STRING")]) is None  # a row of one empty field is written ""
    assert server_line_expression([("id", "bigint"), ("d", "decimal")]) is not None  # type names in any case
    assert {"FLOAT", "DOUBLE", "BINARY", "ARRAY", "STRUCT"}.isdisjoint(SERVER_FIELDS)


def _lines(values: list[bytes], nulls: bytes = b"\x00") -> RawColumn:
    return RawColumn("STRING", values, nulls)


def test_lines_from_the_engine_are_written_with_a_newline_each_and_counted(tmp_path):
    w = CsvGzipWriter(tmp_path / "a.gz")
    w.write_lines(_lines([b'1;"a;b"', "2;Nørd".encode(), b"3;"]))
    w.write_lines(_lines([]))
    w.write_lines(_lines([b"4;x"]))
    out = w.close()
    assert out["rows"] == 4
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == '1;"a;b"\n2;Nørd\n3;\n4;x\n'.encode()


@pytest.mark.parametrize("col, why", [(_lines([b"1;ok", b"2;\xff"]), r"not UTF-8 \(invalid start byte at byte 7\)"),
                                      (_lines([b"1;ok", b""], b"\x02"), "NULL line")])
def test_a_batch_of_lines_that_is_not_text_is_refused_whole(tmp_path, col, why):
    w = CsvGzipWriter(tmp_path / "a.gz")
    w.write_lines(_lines([b"0;first"]))
    with pytest.raises(NotText, match=why):
        w.write_lines(col)
    assert w.rows == 1  # nothing of the refused batch counted or written
    w.abort()
    assert not (tmp_path / "a.gz").exists()
