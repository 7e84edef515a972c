"""Local (or locally mounted) file systems."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import stat as stat_mode
import threading
from collections.abc import Iterable, Iterator
from typing import BinaryIO
from urllib.parse import quote_from_bytes, unquote, urlsplit

from base.errors import (
    AlreadyExists,
    ConfigError,
    InvalidInput,
    NotFound,
    classify,
)
from storage.base import FileSource, FileStat, StorageBackend, check_path, os_file_descriptor, special_kind


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


def _libc(name: str, *argtypes):
    """A function of the C library (Linux calls Python's ``os`` lacks), or None where the C library has none."""
    try:
        call = getattr(ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    call.argtypes, call.restype = list(argtypes), ctypes.c_int
    return call


#: ``syncfs(2)``: since Linux 5.8 it reports a write-back error met on the file system since the file descriptor
#: it is given was opened, which is what lets one call stand for the fsyncs of many files
_SYNCFS = _libc("syncfs", ctypes.c_int)
#: ``sync_file_range(2)``, used with SYNC_FILE_RANGE_WRITE only: starts writing a file's dirty pages back and
#: returns without waiting for them (it makes nothing durable: ``sync_written``'s syncfs still does)
_SYNC_FILE_RANGE = _libc("sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
_SYNC_FILE_RANGE_WRITE = 2
#: a new file at least this large, left to ``sync_written``, has its write-back started as soon as it is written
WRITEBACK_START_BYTES = 256 * 1024


def _start_writeback(fd: int) -> None:
    """Start writing ``fd``'s data to disk now, without waiting.

    Why: a batch's copies are made durable by one syncfs at its end (``defer_syncs``); until then the kernel
    writes nothing back (under its dirty thresholds), so the batch's whole write-back was waited for at the end
    instead of running while the next files were read and hashed.  Measured on this machine, the copy engine
    alone, 386 MB of 0.2-1.8 MB files to two local folders in one process: 1.31 s without it, 0.97 s with it
    (4 alternating rounds each, caches dropped before each).  An error here is left to the syncfs, which reports
    any write-back error since its folder was opened."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _syncfs(fd: int, what: str) -> None:
    """Write back and commit everything of the file system ``fd`` is on; an error since ``fd`` was opened raises."""
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise classify(OSError(code, os.strerror(code)), what)


#: bytes asked of one ``copy_file_range``/``sendfile`` call (the kernel copies at most about 2 GiB a call anyway)
KERNEL_COPY_CHUNK = 1 << 30
#: errors of a first kernel copy call that mean "not between these two files" (another file system: EXDEV; a file
#: system or kernel without it): the next way is tried, nothing having been written
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


def copy_in_kernel(source: FileSource, fd: int) -> str | None:
    """Copy ``source`` (an open local file, from its offset to its end) to the new file ``fd`` inside the kernel:
    ``copy_file_range`` (what ``cp`` uses), else ``sendfile`` (across file systems, which ``copy_file_range``
    refuses with EXDEV); the call that did it, or None where neither can (a stream that is no OS file, a file
    system without either): then nothing was written and the caller writes the bytes itself.

    Why: on this platform's ext4 ``write()`` costs about 1.07 s of system time a GB against 0.28 s for
    ``copy_file_range`` (measured), and no byte is copied into and out of this process.  A copy that stops short
    (the source shrank) is left short: the copy engine's size and source checks refuse it.  Any other error
    (disk full, I/O) is raised as ``OSError``."""
    fd_in = os_file_descriptor(source.stream)
    if fd_in is None:
        return None
    calls = [("copy_file_range", lambda at: os.copy_file_range(fd_in, fd, KERNEL_COPY_CHUNK, at)),
             ("sendfile", lambda at: os.sendfile(fd, fd_in, at, KERNEL_COPY_CHUNK))]
    for name, call in calls:
        copied = 0
        try:
            while n := call(source.offset + copied):
                copied += n
        except OSError as e:
            if copied == 0 and e.errno in _NO_KERNEL_COPY:
                continue
            raise
        return name
    return None


def _write_all(fd: int, chunk: bytes) -> int:
    """Write all of ``chunk`` to ``fd`` (``os.write`` may write less, e.g. when interrupted); its length."""
    view, left = memoryview(chunk), len(chunk)
    while left:
        n = os.write(fd, view[-left:])
        if n <= 0:  # never for a regular file (an error raises); not a loop for ever if it did
            raise OSError(errno.EIO, "write() wrote nothing")
        left -= n
    return len(chunk)


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
    #: while deferring (and syncfs exists): per file system (st_dev), a folder there opened before the first new
    #: file written to it without its own fsync; ``sync_written`` syncs each file system once through it
    _unsynced: dict[int, int] | None = None
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
        """``file://`` URI of the absolute path: what ``pathlib.Path.as_uri`` gives, built without a ``Path``
        (about 2 µs instead of 16 here; a copy asks three, so about 2 s of CPU over 50,000 files)."""
        return "file://" + quote_from_bytes(os.fsencode(os.path.abspath(self._checked(path))))

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
                entries.append(_file_stat(entry.path, found))  # the folder joined with the name, as scandir gives it
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
        def folder_in_the_way() -> AlreadyExists:
            return AlreadyExists(f"rename {src} -> {dst}: a folder is in the way")
        with _os_errors(f"rename {src} -> {dst}"):
            if overwrite:
                if os.path.isdir(dst):
                    raise folder_in_the_way()
                os.replace(src, dst)
            else:
                # link() fails with EEXIST if dst exists or appeared meanwhile, where rename() would silently
                # replace a competing writer's file.  A file is published this way, without a stat before (two
                # per copy, most of a small file's publishing): the folder checks run only when link() refuses.
                try:
                    os.link(src, dst, follow_symlinks=False)
                except FileExistsError:
                    if os.path.isdir(dst):
                        raise folder_in_the_way() from None
                    raise
                except PermissionError:  # EPERM: link() cannot take folders
                    if not os.path.isdir(src):
                        raise
                    # This check-then-rename has a window, acceptable since we only ever publish files by link().
                    if os.path.isdir(dst):
                        raise folder_in_the_way() from None
                    if os.path.lexists(dst):
                        raise AlreadyExists(f"rename {src} -> {dst}: destination exists") from None
                    os.rename(src, dst)
                else:
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

    @property
    def writes_wait(self) -> bool:
        """False while new files are left to one ``syncfs`` per batch (``defer_syncs``): a write then returns
        once the bytes are in the page cache."""
        return self._unsynced is None

    @property
    def copies_from_files(self) -> bool:
        """True: a ``FileSource`` over a local file is copied by the kernel (``copy_in_kernel``)."""
        return True

    def defer_syncs(self) -> None:
        """Until ``sync_folders``, new files and renames leave their fsyncs to one sync per file system.

        A file written from now on is not fsynced by ``_create``; ``sync_written`` makes every such file
        durable with one ``syncfs`` per file system (a folder opened there before the first of them was
        written, so a write-back error of any of them is reported), and must be called before any of them is
        renamed: a crash never leaves a partial file at its final name.  A rename leaves its folder's fsync to
        ``sync_folders``: only the name may be lost until it returns.  Where the C library has no ``syncfs``,
        each file is fsynced as it is written and only the folder fsyncs are deferred (one per folder).

        Cost: every fsync waits for its own write-back and metadata update (on ext4 with a journal, a commit
        each), a few tenths of a millisecond to milliseconds; for a batch of small files this turns one wait per
        copy and folder into two per file system.  ``syncfs`` also writes back what other processes left dirty
        on that file system, so it is meant for batches.
        """
        with self._deferred_lock:
            if self._deferred is None:
                self._deferred = set()
            if self._unsynced is None and _SYNCFS is not None:
                self._unsynced = {}

    def _leave_sync(self, path: str, fd: int) -> bool:
        """Whether the new file ``fd`` (at ``path``) is left to ``sync_written`` instead of its own fsync."""
        with self._deferred_lock:
            if self._unsynced is None:
                return False
            device = os.fstat(fd).st_dev
            if device not in self._unsynced:
                self._unsynced[device] = os.open(os.path.dirname(path) or ".",
                                                 os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            return True

    def sync_written(self) -> None:
        """Make every file written since ``defer_syncs`` durable: one ``syncfs`` per file system they are on."""
        with self._deferred_lock:
            opened = self._unsynced or {}
            if self._unsynced is not None:
                self._unsynced = {}
        try:
            for fd in opened.values():
                _syncfs(fd, "sync the new files")
        finally:
            for fd in opened.values():
                os.close(fd)

    def sync_folders(self) -> None:
        """Make every rename since ``defer_syncs`` durable (one ``syncfs`` per file system, else an fsync per
        folder), then sync each new file and rename at once again."""
        with self._deferred_lock:
            folders, self._deferred = self._deferred or set(), None
            left, self._unsynced = self._unsynced or {}, None
        for fd in left.values():  # files written but never published (the batch failed before sync_written)
            os.close(fd)
        if _SYNCFS is None:
            for folder in sorted(folders):
                with _os_errors(f"sync folder {folder}"):
                    _fsync_dir(folder)
            return
        synced: set[int] = set()
        for folder in sorted(folders):
            with _os_errors(f"sync folder {folder}"):
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    device = os.fstat(fd).st_dev
                    if device not in synced:
                        _syncfs(fd, f"sync folder {folder}")
                        synced.add(device)
                finally:
                    os.close(fd)

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
        """Write a new file and fsync it (or, while deferring, leave that to ``sync_written``), so the rename
        publishes durable data.  A ``FileSource`` is copied in the kernel where it can be (``copy_in_kernel``)."""
        with _os_errors(f"write {path}"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                synced_later = self._leave_sync(path, fd)
                if isinstance(chunks, FileSource) and copy_in_kernel(chunks, fd):
                    size = os.fstat(fd).st_size
                else:
                    size = 0
                    for chunk in chunks:  # straight to the file: no buffer to copy into and flush
                        size += _write_all(fd, chunk)
                if not synced_later:
                    os.fsync(fd)
                elif size >= WRITEBACK_START_BYTES:
                    _start_writeback(fd)
            finally:
                os.close(fd)


def _file_stat(path: str, found: os.stat_result) -> FileStat:
    """Our FileStat from an ``os.stat`` result."""
    is_dir = stat_mode.S_ISDIR(found.st_mode)
    special = special_kind(found.st_mode)
    return FileStat(path, 0 if is_dir or special else found.st_size, found.st_mtime, is_dir, special)
