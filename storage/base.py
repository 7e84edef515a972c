"""The storage-backend interface every target (local, WebHDFS, SFTP) implements.

A backend is not rooted: methods take full paths as the backend spells them
(``open_backend`` hands back the base path of a URL).  Subclasses implement
the primitives; ``glob``, ``sha256``, ``write_atomic`` and
``remove_stale_temps`` are built here once on top of them so every backend
shares the same semantics.
"""

from __future__ import annotations

import io

import abc
import dataclasses
import contextlib
import fnmatch
import functools
import hashlib
import logging
import os
import posixpath
import re
import secrets
import stat as stat_mode
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from base.errors import AlreadyExists, BackupError, InvalidInput, NotFound

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024

# '.<name>.<16 hex>.part': hidden, recognisably ours, and never matched by a
# caller's glob for real files.
_TEMP_RE = re.compile(r"\..+\.[0-9a-f]{16}\.part", re.DOTALL)
# Unicode's control characters (category Cc), exactly: C0, DEL and C1.
_CONTROL_CHAR = re.compile("[\x00-\x1f\x7f-\x9f]")
# Keeps temp names under the 255-byte component limit of ext4 and HDFS.
_TEMP_NAME_BYTES = 200


@dataclass(frozen=True)
class FileStat:
    """What we need to know about a file or folder."""

    path: str
    size: int
    mtime: float
    is_dir: bool
    #: what the entry is if it is neither a regular file nor a folder ("symbolic link", "fifo", ...): such an
    #: entry is reported and never followed or read (a link to /etc/ssh/… must not end up in a backup)
    special: str | None = None
    #: the storage's own SHA-256 of the bytes it wrote, computed as it wrote them (``write_temp`` on a server
    #: that hashes in-stream), or None: then a verification reads the file back
    sha256: str | None = None

    @functools.cached_property
    def name(self) -> str:
        """The last component of the path (computed once: a discovery asks it four times per file listed)."""
        return posixpath.basename(self.path)


_SPECIAL_KINDS = ((stat_mode.S_ISLNK, "symbolic link"), (stat_mode.S_ISFIFO, "fifo"), (stat_mode.S_ISSOCK, "socket"),
                  (stat_mode.S_ISCHR, "character device"), (stat_mode.S_ISBLK, "block device"))


def special_kind(mode: int | None) -> str | None:
    """What a ``st_mode`` (of an lstat: links not followed) names if not a regular file or folder; None if it is."""
    if mode is None or stat_mode.S_ISREG(mode) or stat_mode.S_ISDIR(mode):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "special file")


def check_path(path: str | os.PathLike[str]) -> str:
    """Return ``path`` as a string, or raise InvalidInput if it is unusable."""
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"path must be a non-empty string, got {path!r}")
    bad = _CONTROL_CHAR.search(path)  # one regex pass: this runs several times per file copied
    if bad:
        raise InvalidInput(f"path {path!r} contains control character {bad.group()!r}")
    return path


def temp_name(name: str) -> str:
    """A fresh temporary sibling name for a file called ``name``."""
    short = name.encode()[:_TEMP_NAME_BYTES].decode(errors="ignore")
    return f".{short}.{secrets.token_hex(8)}.part"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temporary names."""
    return _TEMP_RE.fullmatch(name) is not None


class StorageBackend(abc.ABC):
    """A place backups are read from or written to."""

    scheme: str
    #: Set (to the backend's name for the error) where a relative path would resolve against
    #: server-side state (an SFTP login folder, an HDFS home): such paths are refused.
    absolute_paths_only: str | None = None

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str, **options) -> tuple[StorageBackend, str]:
        """Build the backend for ``url``; return it and the URL's base path."""

    @abc.abstractmethod
    def uri(self, path: str) -> str:
        """The full URI of ``path``, for job records and manifests."""

    @abc.abstractmethod
    def stat(self, path: str) -> FileStat | None:
        """Size, mtime and kind of ``path``; None if it does not exist."""

    def lstat(self, path: str) -> FileStat | None:
        """Like ``stat`` without following a symbolic link at ``path`` itself (its ``special`` says so).

        The default is ``stat``: a backend without symbolic links (WebHDFS) has nothing to follow.
        """
        return self.stat(path)

    @abc.abstractmethod
    def list(self, path: str) -> list[FileStat]:
        """Children of folder ``path`` sorted by name; NotFound if it is missing."""

    @abc.abstractmethod
    def open_read(self, path: str, offset: int = 0) -> contextlib.AbstractContextManager[BinaryIO]:
        """Stream the content of ``path`` from byte ``offset`` on."""

    @abc.abstractmethod
    def mkdir(self, path: str) -> None:
        """Create folder ``path`` and its parents; fine if it exists."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        """Move ``src`` to ``dst``; AlreadyExists if ``dst`` exists and not overwrite."""

    @abc.abstractmethod
    def delete(self, path: str, *, recursive: bool = False) -> None:
        """Remove ``path``; a missing path is fine."""

    @abc.abstractmethod
    def _create(self, path: str, chunks: Iterable[bytes]) -> str | None:
        """Write a new file at ``path`` from ``chunks``, failing if it exists; the SHA-256 the storage itself
        computed of what it wrote, where it does (an SFTP server hashing in-stream), else None."""

    @property
    def writes_wait(self) -> bool:
        """Whether writing one file here waits on something other than this process's CPU (a network round trip,
        an fsync), so that several files in flight at once pay; True unless a backend knows better."""
        return True

    @property
    def copies_from_files(self) -> bool:
        """Whether a new file given as a ``FileSource`` over a local file is copied by the kernel rather than read in
        this process and written (local folders: ``copy_file_range``).  False unless a backend knows better."""
        return False

    def defer_syncs(self) -> None:
        """From now until ``sync_folders``, a new file may leave making its data durable to ``sync_written``
        and a rename its folder's entry to ``sync_folders`` (local folders: one sync per file system instead of
        one fsync per file and per folder).  Default: nothing is deferred."""

    def sync_written(self) -> None:
        """Make every file written since ``defer_syncs`` durable; call it before publishing any of them.
        A no-op by default (a backend that does not defer has made each file durable as it wrote it)."""

    def sync_folders(self) -> None:
        """Make every rename since ``defer_syncs`` durable and stop deferring; a no-op by default."""

    def close(self) -> None:
        """Release connections; the backend is unusable afterwards."""

    def __enter__(self) -> StorageBackend:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _checked(self, path: str) -> str:
        """``path`` validated for this backend."""
        path = check_path(path)
        if self.absolute_paths_only and not path.startswith("/"):
            raise InvalidInput(f"{self.absolute_paths_only} paths must be absolute, got {path!r}")
        return path

    def glob(self, folder: str, pattern: str) -> list[FileStat]:
        """Files directly in ``folder`` whose name matches ``pattern``, by (mtime, name).

        Our own in-flight temporary files never match.
        """
        matches = [
            entry
            for entry in self.list(folder)
            if not entry.is_dir and fnmatch.fnmatchcase(entry.name, pattern) and not is_temp_name(entry.name)
        ]
        return sorted(matches, key=lambda entry: (entry.mtime, entry.name))

    def sha256(self, path: str) -> str:
        """Hex SHA-256 of the content of ``path``, read back in full."""
        digest = hashlib.sha256()
        with self.open_read(path) as stream:
            for chunk in iter_chunks(stream):
                digest.update(chunk)
        return digest.hexdigest()

    def sha256_many(self, paths: list[str]) -> dict[str, str]:
        """Hex SHA-256 of several files, by path; backends with a cheaper batch form override it."""
        return {path: self.sha256(path) for path in paths}

    def checksum_spec(self):
        """How the storage checksums new files, where it keeps a file checksum computable while copying
        (HDFS: ``storage.hdfs_checksum.ChecksumSpec``), or a string saying why it is unknown; None: it keeps none."""
        return None

    def file_checksum(self, path: str) -> tuple[dict, int]:
        """The storage's own checksum of ``path`` and its block size (backends whose checksum_spec is not None)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no file checksums")

    def write_atomic(self, path: str, chunks: Iterable[bytes], *, overwrite: bool = False) -> FileStat:
        """Write ``chunks`` to ``path`` so readers see all of it or nothing.

        The data goes to a temporary sibling that is renamed into place
        (``write_temp`` then ``publish``).  The folder must exist.  If ``path``
        exists and not ``overwrite``: AlreadyExists.  On any failure the
        temporary file is removed.
        """
        path = self._checked(path)
        self.publish(self._write_temp(path, chunks, overwrite)[0], path, overwrite=overwrite)
        written = self.stat(path)
        if written is None:
            raise NotFound(f"{self.uri(path)} vanished right after it was written")
        return written

    def write_temp(self, path: str, chunks: Iterable[bytes], *, overwrite: bool = False,
                   looked: bool = False) -> FileStat:
        """Write ``chunks`` to a fresh temporary sibling of ``path``; its FileStat (``.path`` is the temp name).

        The first half of ``write_atomic``, for a caller that checks the copy before it gets its
        final name (the copy engine verifies it there, then calls ``publish``, or ``delete`` on a
        mismatch).  The folder must exist; AlreadyExists if ``path`` exists and not ``overwrite``.
        On any failure the temporary file is removed.  Costs the write and three stats; ``looked``: the
        caller has just made the folder and found nothing at ``path``, and those two stats are skipped
        (``publish`` still never replaces a file that appeared meanwhile).
        """
        temp, digest = self._write_temp(self._checked(path), chunks, overwrite, looked)
        try:
            written = self.stat(temp)
        except BaseException:
            self._discard(temp)
            raise
        if written is None:
            raise NotFound(f"{self.uri(temp)} vanished right after it was written")
        return dataclasses.replace(written, sha256=digest) if digest else written

    def _write_temp(self, path: str, chunks: Iterable[bytes], overwrite: bool,
                    looked: bool = False) -> tuple[str, str | None]:
        """The temporary sibling of ``path`` written from ``chunks`` (removed on failure), and the storage's own
        SHA-256 of it if it computed one while writing; ``looked``: see ``write_temp``."""
        folder, name = posixpath.split(path)
        if not name:
            raise InvalidInput(f"{self.uri(path)} names no file")
        if not looked:
            self._require_folder(folder or ".")
        # Fail before streaming what may be gigabytes; rename() in publish is what
        # actually guarantees that an existing file is never replaced.
        if not overwrite and not looked and self.stat(path) is not None:
            raise AlreadyExists(f"{self.uri(path)} already exists")
        if isinstance(chunks, (bytes, bytearray, memoryview)):
            chunks = [chunks]
        temp = posixpath.join(folder, temp_name(name))
        try:
            digest = self._create(temp, chunks)
        except BaseException:
            self._discard(temp)
            raise
        return temp, digest

    def publish(self, temp: str, path: str, *, overwrite: bool = False) -> None:
        """Rename the temporary file ``temp`` (from ``write_temp``) to its final name ``path``.

        AlreadyExists if ``path`` exists and not ``overwrite`` (never replaced).  On any failure
        the temporary file is removed.  One rename, no data read.
        """
        try:
            self.rename(temp, path, overwrite=overwrite)
        except BaseException:
            self._discard(temp)
            raise

    def remove_stale_temps(self, folder: str, *, older_than: float = 0.0) -> int:
        """Delete our temporary files in ``folder`` left by killed writers.

        Only temps whose mtime is at least ``older_than`` seconds old are
        removed, so a live writer sharing the folder can be spared.  Returns
        how many were deleted.
        """
        horizon = time.time() - older_than
        removed = 0
        for entry in self.list(folder):
            if not entry.is_dir and is_temp_name(entry.name) and entry.mtime <= horizon:
                self.delete(entry.path)
                removed += 1
        if removed:
            log.info("removed %d stale temporary file(s) in %s", removed, self.uri(folder))
        return removed

    def _require_folder(self, folder: str) -> None:
        """Raise unless ``folder`` exists and is a folder."""
        found = self.stat(folder)
        if found is None:
            raise NotFound(f"folder {self.uri(folder)} does not exist")
        if not found.is_dir:
            raise InvalidInput(f"{self.uri(folder)} is not a folder")

    def _discard(self, temp: str) -> None:
        """Best-effort removal of a temp file while another error propagates."""
        try:
            self.delete(temp)
        except BackupError as e:
            # The original failure matters more; remove_stale_temps collects it.
            log.warning("could not remove temporary file %s: %s", self.uri(temp), e.one_line())

    def _check_offset(self, offset: int) -> int:
        """``offset`` if it is a usable read offset."""
        if not isinstance(offset, int) or offset < 0:
            raise InvalidInput(f"read offset must be a non-negative integer, got {offset!r}")
        return offset


@dataclass(frozen=True)
class FileSource:
    """The ``chunks`` of ``write_temp`` or ``write_atomic`` taken from an open file: its bytes from ``offset`` to its end.

    A backend whose ``copies_from_files`` is True has the kernel copy them from the file (no byte passes through
    this process); any other reads them here in chunks, from ``offset`` whatever the stream's position was.
    """

    stream: BinaryIO
    offset: int = 0

    def __iter__(self) -> Iterator[bytes]:
        self.stream.seek(self.offset)
        return iter_chunks(self.stream)


def os_file_descriptor(stream) -> int | None:
    """The file descriptor of ``stream`` if it is an open OS file itself (the kernel can copy from it), None for a
    stream that is not one or wraps one (a restore's checked stream, an in-memory buffer)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def iter_chunks(stream: BinaryIO, size: int = READ_CHUNK) -> Iterator[bytes]:
    """Yield ``stream``'s content in chunks of at most ``size`` bytes."""
    while chunk := stream.read(size):
        yield chunk


class MappedReadStream(io.RawIOBase):
    """A client's file being read, whose client errors come out as ours through ``errors(what)``."""

    def __init__(self, raw, errors, what: str) -> None:
        super().__init__()
        self._raw = raw
        self._errors = errors
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with self._errors(self._what):
            return self._raw.readinto(buffer)
