"""Local (or locally mounted) file systems."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat as stat_mode
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from base.errors import (
    AlreadyExists,
    ConfigError,
    InvalidInput,
    NotFound,
    classify,
)
from storage.base import FileStat, StorageBackend, check_path, special_kind


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """Translate OSError raised inside the block into our error families."""
    try:
        yield
    except FileNotFoundError as e:
        raise NotFound(f"{what}: {e.strerror}") from e
    except FileExistsError as e:
        raise AlreadyExists(f"{what}: {e.strerror}") from e
    except (NotADirectoryError, IsADirectoryError) as e:
        raise InvalidInput(f"{what}: {e.strerror}") from e
    except OSError as e:
        if e.errno == errno.ENOTEMPTY:
            raise InvalidInput(f"{what}: {e.strerror}") from e
        raise classify(e, what) from e


def _fsync_dir(folder: str) -> None:
    """Make a rename or unlink in ``folder`` survive a crash."""
    fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend(StorageBackend):
    """Files on a path the worker can open directly (disk, NFS, ...)."""

    scheme = "file"
    #: folders whose fsync a rename left to ``sync_folders`` (None: not deferring, every rename syncs at once)
    _deferred: set[str] | None = None
    _deferred_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **options) -> tuple[LocalBackend, str]:
        """Accept a plain path or a ``file://`` URL; there are no options."""
        if options:
            raise ConfigError(f"file storage takes no options, got {sorted(options)}")
        path = url
        if url[:5].lower() == "file:":
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise ConfigError(f"{url!r}: file URLs must not name a remote host")
            if parts.query or parts.fragment:
                raise ConfigError(f"{url!r}: unexpected query or fragment in a file URL")
            path = unquote(parts.path)
        return cls(), os.path.abspath(check_path(path))

    def uri(self, path: str) -> str:
        """``file://`` URI of the absolute path."""
        return Path(os.path.abspath(self._checked(path))).as_uri()

    def stat(self, path: str) -> FileStat | None:
        """Stat following symlinks; None if missing."""
        return self._stat(os.stat, "stat", path)

    def lstat(self, path: str) -> FileStat | None:
        """Stat without following a symbolic link at ``path`` (then ``special`` is "symbolic link"); None if missing."""
        return self._stat(os.lstat, "lstat", path)

    def _stat(self, call, what: str, path: str) -> FileStat | None:
        path = self._checked(path)
        try:
            found = call(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise classify(e, f"{what} {path}") from e
        return _file_stat(path, found)

    def list(self, path: str) -> list[FileStat]:
        """Children of a folder sorted by name, skipping any that vanish meanwhile.

        Links are not followed (lstat): a symbolic link is listed as one (``special``), whatever it points to,
        so a link loop or a link out of the tree is an entry to report, not an error of the whole listing.
        """
        path = self._checked(path)
        entries = []
        with _os_errors(f"list {path}"), os.scandir(path) as listing:
            for entry in listing:
                try:
                    found = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries.append(_file_stat(os.path.join(path, entry.name), found))
        return sorted(entries, key=lambda entry: entry.name)

    @contextlib.contextmanager
    def open_read(self, path: str, offset: int = 0) -> Iterator[BinaryIO]:
        """Open for reading, positioned at ``offset`` (at most the size)."""
        path = self._checked(path)
        offset = self._check_offset(offset)
        with _os_errors(f"open {path}"):
            # O_NOFOLLOW: a file swapped for a symbolic link after it was listed is refused (ELOOP), not followed;
            # O_NONBLOCK: a fifo does not hang the open (it is refused below; no effect on regular files).
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise InvalidInput(f"open {path}: a symbolic link; only regular files are read") from e
                raise
            stream = open(fd, "rb")
        with stream:
            found = os.fstat(stream.fileno())
            if not stat_mode.S_ISREG(found.st_mode):
                raise InvalidInput(f"open {path}: not a regular file ({special_kind(found.st_mode) or 'a folder'})")
            size = found.st_size
            if offset > size:
                raise InvalidInput(f"offset {offset} is past the end of {path} ({size} bytes)")
            stream.seek(offset)
            yield stream

    def mkdir(self, path: str) -> None:
        """Create the folder and missing parents."""
        path = self._checked(path)
        with _os_errors(f"mkdir {path}"):
            os.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        """Move a file or folder; never replaces a folder."""
        src, dst = self._checked(src), self._checked(dst)
        with _os_errors(f"rename {src} -> {dst}"):
            if os.path.isdir(dst):
                raise AlreadyExists(f"rename {src} -> {dst}: a folder is in the way")
            if overwrite:
                os.replace(src, dst)
            elif os.path.isdir(src):
                # link() cannot take folders.  This check-then-rename has a
                # window, acceptable since we only ever publish files that way.
                if os.path.lexists(dst):
                    raise AlreadyExists(f"rename {src} -> {dst}: destination exists")
                os.rename(src, dst)
            else:
                # link() fails with EEXIST if dst appeared meanwhile, where
                # rename() would silently replace a competing writer's file.
                os.link(src, dst, follow_symlinks=False)
                os.unlink(src)
            self._sync_folder(os.path.dirname(dst))
            if os.path.dirname(src) != os.path.dirname(dst):
                self._sync_folder(os.path.dirname(src))

    def _sync_folder(self, folder: str) -> None:
        """fsync ``folder`` now, or once at ``sync_folders`` while deferring."""
        with self._deferred_lock:
            if self._deferred is not None:
                self._deferred.add(folder)
                return
        _fsync_dir(folder)

    def defer_folder_syncs(self) -> None:
        """Renames from now on leave their folder's fsync to ``sync_folders``: one per folder, not one per file.
        The file itself is still fsynced before it is renamed, so a crash never leaves a partial file at its
        final name; only the name may be lost until ``sync_folders`` returns."""
        with self._deferred_lock:
            if self._deferred is None:
                self._deferred = set()

    def sync_folders(self) -> None:
        """fsync every folder a rename touched since ``defer_folder_syncs``, then sync each rename at once again."""
        with self._deferred_lock:
            folders, self._deferred = self._deferred or set(), None
        for folder in sorted(folders):
            with _os_errors(f"sync folder {folder}"):
                _fsync_dir(folder)

    def delete(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, an empty folder, or with ``recursive`` any folder."""
        path = self._checked(path)
        with _os_errors(f"delete {path}"):
            try:
                found = os.lstat(path)
                if not stat_mode.S_ISDIR(found.st_mode):
                    os.unlink(path)
                elif recursive:
                    shutil.rmtree(path)
                else:
                    os.rmdir(path)
            except (FileNotFoundError, NotADirectoryError):
                return

    def _create(self, path: str, chunks: Iterable[bytes]) -> None:
        """Write a new file and fsync it, so the rename publishes durable data."""
        with _os_errors(f"write {path}"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            with open(fd, "wb") as stream:
                for chunk in chunks:
                    stream.write(chunk)
                stream.flush()
                os.fsync(stream.fileno())


def _file_stat(path: str, found: os.stat_result) -> FileStat:
    """Our FileStat from an ``os.stat`` result."""
    is_dir = stat_mode.S_ISDIR(found.st_mode)
    special = special_kind(found.st_mode)
    return FileStat(path, 0 if is_dir or special else found.st_size, found.st_mtime, is_dir, special)
