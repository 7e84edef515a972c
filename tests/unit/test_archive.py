"""The streaming CSV+gzip writer: quoting, NULLs, counts and checksums in one pass."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io

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
