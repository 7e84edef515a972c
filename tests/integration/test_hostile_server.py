"""Hostile values meeting the real servers (security issue 15, items 4 and 9): a U+2028 file name in the
SFTP batch checksum (sshd), ``${…}`` in values written to a count table (HiveServer2)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from base.identifiers import TableName
from connectors.hive import HiveClient, create_or_check_table, replace_rows, sql_value
from storage.locations import storage_options


def test_sftp_batch_checksums_keep_unicode_line_breaks_in_names(settings, platform, tmp_path):
    """sha256sum prints a U+2028 (or U+0085, U+2029) in a name raw: the batch parser must not split there,
    else every digest after it shifts by one and verified copies are refused (or the wrong one accepted)."""
    from base.errors import InvalidInput
    from storage import open_backend

    backend, folder = open_backend(f"sftp://127.0.0.1:{settings.sftp.port}{tmp_path}/lines",
                                   **storage_options(settings, "sftp://"))
    names = ["a\u2028b.csv", "para\u2029graph.csv", "plain.csv", "back\\slash\u2028.csv", "last.csv"]
    with backend:
        backend.mkdir(folder)
        for i, name in enumerate(names):
            backend.write_atomic(f"{folder}/{name}", name.encode() * (i + 1))
        paths = [f"{folder}/{n}" for n in names]
        assert backend.sha256_many(paths) == {f"{folder}/{n}": hashlib.sha256(n.encode() * (i + 1)).hexdigest()
                                              for i, n in enumerate(names)}
        # A newline or carriage return never reaches the remote command: refused before it is built.
        for bad in ("new\nline.csv", "carriage\r.csv"):
            with pytest.raises(InvalidInput, match="control character"):
                backend.sha256_many([f"{folder}/{bad}"])


VARIABLE_REFERENCES = ["${env:HOME}", "${system:user.name}", "${hiveconf:hive.server2.thrift.port}",
                       "${spark:spark.app.name}", "x_${env:PATH}_${hivevar:nothing}.csv"]


def test_variable_references_in_values_are_stored_as_text(settings, platform):
    """HiveServer2 substitutes ``${…}`` even inside string literals unless the session turns it off:
    a file name reaching the count table would store a server-side environment value (seen without the
    session settings: ``x_${env:PATH}_…`` was stored as ``x_/usr/local/…:/bin_.csv``)."""
    table = TableName("mnaas_test", f"subst_{uuid.uuid4().hex[:10]}")
    rows = [[value, n] for n, value in enumerate(VARIABLE_REFERENCES)]
    with HiveClient.from_settings(settings) as hive:
        create_or_check_table(hive, table, [("file_name", "STRING"), ("n", "BIGINT")])
        try:
            replace_rows(hive, table, rows, "write hostile file names")
            stored = hive.query(f"SELECT file_name FROM {table.sql} ORDER BY n", "read them back")
            literals = hive.query("SELECT " + ", ".join(sql_value(v) for v in VARIABLE_REFERENCES), "literals")
        finally:
            hive.execute(f"DROP TABLE IF EXISTS {table.sql}", "drop")
    assert [value for (value,) in stored] == VARIABLE_REFERENCES
    assert list(literals[0]) == VARIABLE_REFERENCES
