"""SFTP servers (edge nodes) through paramiko, via ``connectors.sftp``.

Connections are opened with ``SftpTarget`` (host key verified against the
configured known_hosts, key authentication) and pooled: a thread takes an idle
session or opens one, and gives it back when done, so concurrent writers each
get their own channel while sequential calls reuse one connection.

``sha256`` runs ``sha256sum`` on the server: no need to read a file back
over the network to verify it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import posixpath
import socket
import stat as stat_mode
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit

import paramiko

from base.errors import (
    AlreadyExists,
    BackupError,
    ConfigError,
    ConnectionFailed,
    FatalError,
    InvalidInput,
    NotFound,
    classify,
)
from connectors.sftp import SftpSession, SftpTarget, paced_step, remote_sha256sum, send_to_receiver
from storage.base import MappedReadStream, FileStat, StorageBackend, check_path, special_kind

DEFAULT_PORT = 22
# Outstanding read requests while streaming a file: enough to hide the round
# trip, bounded so a slow reader never buffers a whole large file in memory.
PREFETCH_REQUESTS = 64
_OPTIONS = {"key_file", "known_hosts", "passphrase", "connect_timeout", "stall_timeout"}
#: files this large or larger are hashed by the server as it writes them (one python3 start, ~20 ms of its
#: CPU, saves reading them back: sha256sum reads ~350 MB/s); smaller ones are read back in one batch
IN_STREAM_MIN_BYTES = 8 * 1024 * 1024
SHA256_ARGS_BYTES = 64 * 1024  # command line length per remote sha256sum, far below the kernel's limit


@contextlib.contextmanager
def _sftp_errors(what: str) -> Iterator[None]:
    """Translate paramiko and socket exceptions raised inside the block into our families."""
    try:
        yield
    except BackupError:
        raise
    except (paramiko.SSHException, EOFError, socket.timeout, ConnectionError) as e:
        raise ConnectionFailed(f"{what}: {e or type(e).__name__}") from e
    except paramiko.SFTPError as e:
        # The SFTP stream itself out of step ("Garbage packet received" after a black hole stalled a read in the
        # middle of a packet): the channel is unusable, a new connection is not. A file's own refusal comes as
        # IOError with an SFTP status, below.
        raise ConnectionFailed(f"{what}: SFTP protocol stream broken: {e or type(e).__name__}") from e
    except OSError as e:
        # paramiko raises IOError(errno, text) for SFTP status codes it knows;
        # SSH_FX_FAILURE arrives without an errno.
        if e.errno == errno.ENOENT:
            raise NotFound(f"{what}: no such file or folder") from e
        if e.errno == errno.EACCES:
            raise FatalError(f"{what}: permission denied") from e
        raise classify(e, what) from e


class SftpBackend(StorageBackend):
    """Files on an SSH server, reached over SFTP with a verified host key."""

    scheme = "sftp"
    absolute_paths_only = "SFTP"  # relative ones would depend on the login folder

    def __init__(self, target: SftpTarget) -> None:
        self._target = target
        self._idle: list[SftpSession] = []
        self._pool_lock = threading.Lock()
        host = target.s.host
        self._authority = "{}@{}:{}".format(
            quote(target.user, safe=""), f"[{host}]" if ":" in host else host, target.s.port
        )

    @classmethod
    def from_url(cls, url: str, **options) -> tuple[SftpBackend, str]:
        """Build from ``sftp://[user@]host[:port]/path``.

        Options: ``key_file`` and ``known_hosts`` (required: host keys are
        always verified), ``passphrase``, ``connect_timeout`` and ``stall_timeout``
        (seconds: how long a write or a request may wait without any progress).
        """
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ConfigError(f"unknown SFTP option(s): {sorted(unknown)}")
        missing = {"key_file", "known_hosts"} - {name for name, value in options.items() if value}
        if missing:
            raise ConfigError(f"{url!r}: SFTP storage needs the option(s) {sorted(missing)}")
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigError(f"{url!r}: an SFTP URL needs a host")
        if parts.query or parts.fragment or parts.password:
            raise ConfigError(f"{url!r}: no password, query or fragment in an SFTP URL (keys only)")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as e:
            raise ConfigError(f"{url!r}: bad port") from e
        path = check_path(unquote(parts.path) or "/")
        if not path.startswith("/"):
            raise ConfigError(f"{url!r}: SFTP paths must be absolute")
        target = SftpTarget.for_address(
            parts.hostname,
            port,
            unquote(parts.username) if parts.username else None,
            Path(options["key_file"]),
            Path(options["known_hosts"]),
            passphrase=options.get("passphrase"),
            connect_timeout=options.get("connect_timeout") or 15,
            stall_timeout=options.get("stall_timeout") or 60,
        )
        return cls(target), posixpath.normpath(path)

    # -- connections -----------------------------------------------------------

    @contextlib.contextmanager
    def _session(self) -> Iterator[SftpSession]:
        """An open session for the duration of the block; broken ones are dropped, not pooled."""
        with self._pool_lock:
            session = self._idle.pop() if self._idle else None
        if session is None or not session.transport.is_active():
            session = self._target.connect()
        try:
            yield session
        except (paramiko.SSHException, EOFError) as e:
            # A paramiko call the block did not wrap (closing a remote file after the connection dropped raises
            # "Server connection dropped"): the connection failed, whichever call noticed it.  Raised raw, it
            # classified as fatal and a restore's download cut by an sshd outage was never retried.
            session.close()
            raise ConnectionFailed(f"SSH connection to {self._authority}: {e or type(e).__name__}") from e
        except (ConnectionFailed, OSError):
            session.close()
            raise
        except BackupError as e:
            if not e.retryable and _connection_lost(session):
                # paramiko reports a write on a connection that died as OSError("Socket is closed") with no
                # errno, which classifies as fatal: the connection's state, not the message, says it was lost.
                session.close()
                raise ConnectionFailed(f"{e} (the SSH connection was lost)") from e
            self._give_back(session)  # a refused operation leaves the connection usable
            raise
        except BaseException:
            self._give_back(session)  # a refused operation leaves the connection usable
            raise
        self._give_back(session)

    def _give_back(self, session: SftpSession) -> None:
        """Return a session to the pool if it is still connected."""
        if session.transport.is_active():
            with self._pool_lock:
                self._idle.append(session)
        else:
            session.close()

    def close(self) -> None:
        """Close every pooled connection."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()

    # -- the interface ---------------------------------------------------------

    def uri(self, path: str) -> str:
        """``sftp://user@host:port/path``."""
        return f"sftp://{self._authority}{quote(self._checked(path))}"

    def stat(self, path: str) -> FileStat | None:
        """STAT (following links); None if the path does not exist."""
        path = self._checked(path)
        with self._session() as session:
            found = session.stat(path)
        return None if found is None else _file_stat(path, found)

    def lstat(self, path: str) -> FileStat | None:
        """LSTAT: a symbolic link at ``path`` itself is reported as one (``special``), not followed."""
        path = self._checked(path)
        with self._session() as session:
            found = session.lstat(path)
        return None if found is None else _file_stat(path, found)

    def list(self, path: str) -> list[FileStat]:
        """Children of a folder sorted by name."""
        path = self._checked(path)
        what = f"list {self.uri(path)}"
        with self._session() as session:
            try:
                with _sftp_errors(what):
                    entries = session.sftp.listdir_attr(path)
            except NotFound:
                found = session.stat(path)
                if found is not None and not stat_mode.S_ISDIR(found.st_mode):
                    raise InvalidInput(f"{what}: not a folder") from None
                raise
        return sorted(
            (_file_stat(posixpath.join(path, entry.filename), entry) for entry in entries),
            key=lambda entry: entry.name,
        )

    @contextlib.contextmanager
    def open_read(self, path: str, offset: int = 0) -> Iterator[BinaryIO]:
        """Stream a remote file with a bounded read-ahead."""
        path = self._checked(path)
        offset = self._check_offset(offset)
        what = f"read {self.uri(path)}"
        with self._session() as session:
            with _sftp_errors(what):
                remote = session.sftp.open(path, "rb")
            with remote:
                with _sftp_errors(what):
                    size = remote.stat().st_size
                if offset > size:
                    raise InvalidInput(f"{what}: offset {offset} is past the end ({size} bytes)")
                remote.seek(offset)
                remote.prefetch(size, max_concurrent_requests=PREFETCH_REQUESTS)
                yield io.BufferedReader(MappedReadStream(remote, _sftp_errors, what), buffer_size=remote.MAX_REQUEST_SIZE * 8)

    def mkdir(self, path: str) -> None:
        """Create the folder and its parents; AlreadyExists if a file has that name."""
        path = self._checked(path)
        with self._session() as session:
            found = session.stat(path)
            if found is not None:
                if not stat_mode.S_ISDIR(found.st_mode):
                    raise AlreadyExists(f"mkdir {self.uri(path)}: a file has that name")
                return
            parent = posixpath.dirname(path)
            while parent != "/":
                above = session.stat(parent)
                if above is not None:
                    if not stat_mode.S_ISDIR(above.st_mode):
                        raise InvalidInput(f"mkdir {self.uri(path)}: {parent} is a file")
                    break
                parent = posixpath.dirname(parent)
            session.makedirs(path)

    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        """Move a file or folder; never into or over a folder.

        Without ``overwrite`` the server's plain rename is used, which OpenSSH
        implements with link()+unlink() and so never replaces a file; with it,
        the atomic posix-rename@openssh.com extension.
        """
        src, dst = self._checked(src), self._checked(dst)
        what = f"rename {self.uri(src)} -> {self.uri(dst)}"
        with self._session() as session:
            existing = session.stat(dst)
            if existing is not None and (stat_mode.S_ISDIR(existing.st_mode) or not overwrite):
                raise AlreadyExists(f"{what}: destination exists")
            if not overwrite:
                session.rename_no_replace(src, dst)
                return
            try:
                with _sftp_errors(what):
                    session.sftp.posix_rename(src, dst)
            except NotFound:
                if session.stat(src) is None:
                    raise NotFound(f"{what}: source does not exist") from None
                raise NotFound(f"{what}: destination folder does not exist") from None

    def delete(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, an empty folder, or with ``recursive`` any folder."""
        path = self._checked(path)
        with self._session() as session:
            self._delete(session, path, recursive)

    def _delete(self, session: SftpSession, path: str, recursive: bool) -> None:
        what = f"delete {self.uri(path)}"
        with _sftp_errors(what):
            try:
                found = session.sftp.lstat(path)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            if not stat_mode.S_ISDIR(found.st_mode):
                session.remove(path)
                return
            children = session.sftp.listdir(path)
            if children and not recursive:
                raise InvalidInput(f"{what}: folder is not empty")
            for name in children:
                self._delete(session, posixpath.join(path, name), recursive)
            session.sftp.rmdir(path)

    @property
    def host(self) -> str:
        return self._target.s.host

    @property
    def port(self) -> int:
        return self._target.s.port

    def set_pace(self, pace) -> None:
        """Pace every write by ``pace(n)`` (the host's shared bandwidth budget, ``backup.bandwidth``), or None."""
        self._target.pace = pace

    def _create(self, path: str, chunks: Iterable[bytes]) -> str | None:
        """Write a new file (O_EXCL), each chunk taken from the host's budget if it has one.

        A file of ``IN_STREAM_MIN_BYTES`` or more goes through the server's receiver (``connectors.sftp``),
        which hashes the bytes as it writes them: its SHA-256 is returned and the copy is verified without
        reading it again.  A smaller one (or a server without python3) is written with pipelined SFTP
        writes (their errors surface at close) and None is returned: starting the receiver costs about
        what reading a few megabytes back costs, and small files are read back in one batch.  Up to
        ``IN_STREAM_MIN_BYTES`` are held in memory to decide.
        """
        what = f"write {self.uri(path)}"
        pace = self._target.pace
        it = iter(chunks)
        head: list[bytes] = []
        held = 0
        for chunk in it:
            head.append(chunk)
            held += len(chunk)
            if held >= IN_STREAM_MIN_BYTES:
                break
        with self._session() as session:
            if held >= IN_STREAM_MIN_BYTES and self._target.s.verify == "in-stream":
                got = send_to_receiver(session, path, 0o644, itertools.chain(head, it), pace, None, what,
                                       exclusive=True)
                if got is not None:
                    return got.remote_sha256
            with _sftp_errors(what):
                remote = session.sftp.open(path, "wbx")
            try:
                remote.set_pipelined(True)
                step = paced_step(pace) if pace is not None else 0
                for chunk in itertools.chain(head, it):
                    for piece in ((chunk[i:i + step] for i in range(0, len(chunk), step)) if step else (chunk,)):
                        if pace is not None:
                            pace(len(piece))
                        with _sftp_errors(what):
                            remote.write(piece)
            except BaseException:
                with contextlib.suppress(Exception):
                    remote.close()
                raise
            with _sftp_errors(what):
                remote.close()  # waits for every pipelined write's acknowledgement
        return None

    def sha256(self, path: str) -> str:
        """SHA-256 computed by ``sha256sum`` on the server; NotFound if missing."""
        path = self._checked(path)
        return self.sha256_many([path])[path]

    def sha256_many(self, paths: list[str]) -> dict[str, str]:
        """One remote ``sha256sum`` per batch of paths: starting a remote command costs far more than a small file."""
        paths = [self._checked(path) for path in paths]
        digests: dict[str, str] = {}
        with self._session() as session:
            batch: list[str] = []
            for path in paths + [None]:
                if batch and (path is None or sum(len(p) + 3 for p in batch) + len(path) > SHA256_ARGS_BYTES):
                    digests.update(self._sha256_batch(session, batch))
                    batch = []
                if path is not None:
                    batch.append(path)
        return digests

    def _sha256_batch(self, session: SftpSession, paths: list[str]) -> dict[str, str]:
        what = f"remote sha256sum of {len(paths)} file(s) on {self._authority}"
        with _sftp_errors(what):
            code, digests, err = remote_sha256sum(session.transport, paths, self._target.s.connect_timeout)
        if code == 0 and len(digests) == len(paths):  # sha256sum answers in argument order
            return dict(zip(paths, digests))
        for path in paths:  # name the file that could not be read
            found = session.stat(path)
            if found is None:
                raise NotFound(f"sha256 {self.uri(path)}: no such file")
            if stat_mode.S_ISDIR(found.st_mode):
                raise InvalidInput(f"sha256 {self.uri(path)}: is a folder")
        raise FatalError(f"{what}: exit {code}: {' '.join(err.split())[:300]}")


def _connection_lost(session: SftpSession) -> bool:
    """Whether the session's SSH connection or its SFTP channel is gone (not closed by us: we close it after)."""
    try:
        return not session.transport.is_active() or session.sftp.get_channel().closed
    except Exception:  # a session too broken to answer is lost
        return True


def _file_stat(path: str, attrs: paramiko.SFTPAttributes) -> FileStat:
    """Our FileStat from SFTP attributes."""
    is_dir = stat_mode.S_ISDIR(attrs.st_mode or 0)
    special = special_kind(attrs.st_mode)  # a listing's attributes are lstat's: a link shows as one
    return FileStat(path, 0 if is_dir or special else int(attrs.st_size or 0), float(attrs.st_mtime or 0), is_dir,
                    special)
