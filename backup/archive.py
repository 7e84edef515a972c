"""Streaming ``;``-CSV → gzip writer with row count, byte count and SHA-256 in the same pass.

CSV dialect: ``;`` delimiter, ``"`` quote char, fields quoted only when they
contain ``;``, ``"``, CR or LF (quotes doubled inside), ``\\n`` line ends, UTF-8.
SQL NULL is written as an empty field.  An empty string is also an empty field:
consumers that must tell them apart should not rely on this format (the
legacy export could not either).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
from collections.abc import Iterable
from pathlib import Path


class _HashingSink(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to ``raw``."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.raw.write(b)
        return len(b)


class CsvGzipWriter:
    """Write column batches as gzip'ed CSV to ``path`` (the caller renames it into place)."""

    def __init__(self, path: Path, compresslevel: int = 3):
        self.path = path
        self._raw = open(path, "wb")
        self._sink = _HashingSink(self._raw)
        # mtime=0 keeps the archive byte-identical for identical data (re-export yields the same SHA-256).
        self._gz = gzip.GzipFile(fileobj=self._sink, mode="wb", compresslevel=compresslevel, mtime=0)
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf, delimiter=";", quotechar='"', quoting=csv.QUOTE_MINIMAL,
                               lineterminator="\n")
        self.rows = 0

    def write_columns(self, cols: list[list]) -> None:
        """Append one batch given as column lists."""
        if not cols:
            return
        self._csv.writerows(zip(*cols))
        self.rows += len(cols[0])
        self._flush_text()

    def write_rows(self, rows: Iterable[tuple]) -> None:
        """Append rows given as tuples."""
        for row in rows:
            self._csv.writerow(row)
            self.rows += 1
        self._flush_text()

    def _flush_text(self) -> None:
        text = self._buf.getvalue()
        self._buf.seek(0)
        self._buf.truncate()
        self._gz.write(text.encode("utf-8"))

    def close(self, append: list[Path] = ()) -> dict:
        """Finish the gzip member, append other members' files, fsync; return rows, bytes and sha256.

        Appended files are gzip members written by parallel streams: they pass
        through the same hashing sink, so the archive is hashed in the one pass
        that writes it.
        """
        self._gz.close()
        for p in append:
            with open(p, "rb") as f:
                while chunk := f.read(4 * 1024 * 1024):
                    self._sink.write(chunk)
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        return {"rows": self.rows, "bytes": self._sink.size, "sha256": self._sink.sha.hexdigest()}

    def abort(self) -> None:
        """Drop the partial file (also on a full disk, where every flush on the way fails)."""
        try:
            self._gz.close()  # so no half-closed GzipFile writes into a closed file later
        except (OSError, ValueError):
            pass
        try:
            self._raw.close()  # flushes its buffer: ENOSPC again on a full disk
        except (OSError, ValueError):
            pass
        finally:
            self.path.unlink(missing_ok=True)

    @property
    def bytes_written(self) -> int:
        return self._sink.size


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
