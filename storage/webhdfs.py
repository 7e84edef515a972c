"""HDFS over its WebHDFS REST API, through the ``hdfs`` package's client."""

from __future__ import annotations

import contextlib
import io
import posixpath
from collections.abc import Iterable, Iterator
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit

import requests
import urllib3.exceptions
from hdfs import InsecureClient
from hdfs.client import _Request
from hdfs.util import HdfsError

from base.errors import (
    AlreadyExists,
    AuthFailed,
    BackupError,
    ConfigError,
    ConnectionFailed,
    FatalError,
    InvalidInput,
    NotFound,
    RetryableError,
    classify,
)
from storage.base import MappedReadStream, READ_CHUNK, FileStat, StorageBackend, check_path
from storage.hdfs_checksum import CHECKSUM_TYPES, ChecksumSpec

DEFAULT_PORT = 9870  # the namenode's HTTP port since Hadoop 3
DEFAULT_TLS_PORT = 9871  # its HTTPS port (dfs.namenode.https-address)
DEFAULT_TIMEOUT = (10.0, 300.0)  # (connect, read) seconds; never hang a worker

# RemoteException names (the "exception" field) mapped to our families.
_REMOTE_ERRORS: dict[str, type[BackupError]] = {
    "FileNotFoundException": NotFound,
    "FileAlreadyExistsException": AlreadyExists,
    "AccessControlException": AuthFailed,
    "AuthorizationException": AuthFailed,
    "SecurityException": AuthFailed,
    "IllegalArgumentException": InvalidInput,
    "InvalidPathException": InvalidInput,
    "ParentNotDirectoryException": InvalidInput,
    "PathIsNotEmptyDirectoryException": InvalidInput,
    "RetriableException": ConnectionFailed,
    "StandbyException": ConnectionFailed,
    "SafeModeException": RetryableError,
    "AlreadyBeingCreatedException": RetryableError,
}

# Raised by requests/urllib3 when the namenode or a datanode cannot be reached
# or drops the connection, including halfway through a streamed body.
_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
)


class _Client(InsecureClient):
    """HdfsCLI's client plus the one operation it lacks (its metaclass turns the name into GETSERVERDEFAULTS)."""

    _get_server_defaults = _Request("GET")


def _from_hdfs_error(e: HdfsError, what: str) -> BackupError:
    """Our error for an HdfsError, by its RemoteException name."""
    message = f"{what}: {e.message}"
    family = _REMOTE_ERRORS.get(e.exception or "")
    if family is not None:
        return family(message)
    # The client raises these two without a RemoteException name.
    if e.message.startswith("Authentication failure"):
        return AuthFailed(message)
    if e.message.endswith("is not a directory."):
        return InvalidInput(message)
    return FatalError(message)


@contextlib.contextmanager
def _hdfs_errors(what: str) -> Iterator[None]:
    """Translate client exceptions raised inside the block into our families."""
    try:
        yield
    except HdfsError as e:
        raise _from_hdfs_error(e, what) from e
    except requests.exceptions.SSLError as e:
        if "CERTIFICATE_VERIFY_FAILED" in str(e):  # swebhdfs: fatal, the same certificate is refused on every try
            raise AuthFailed(f"{what}: TLS certificate refused ({e})") from e
        raise ConnectionFailed(f"{what}: {e}") from e
    except _TRANSPORT_ERRORS as e:
        raise ConnectionFailed(f"{what}: {e}") from e
    except requests.RequestException as e:
        raise classify(e, what) from e


class WebHdfsBackend(StorageBackend):
    """An HDFS cluster reached through the namenode's WebHDFS endpoint."""

    scheme = "webhdfs"
    absolute_paths_only = "WebHDFS"  # relative ones would resolve against the HDFS home

    def __init__(
        self,
        namenode_url: str,
        *,
        user: str | None = None,
        kerberos: bool = False,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        block_size: int | None = None,
    ) -> None:
        self._netloc = urlsplit(namenode_url).netloc
        self._scheme = "swebhdfs" if namenode_url.startswith("https://") else "webhdfs"
        self._session = requests.Session()
        if block_size is not None and (not isinstance(block_size, int) or block_size <= 0):
            raise ConfigError(f"WebHDFS block_size must be a positive number of bytes, got {block_size!r}")
        self._block_size = block_size  # None: the cluster's default (dfs.blocksize)
        self._spec: ChecksumSpec | str | None = None
        if kerberos:
            if user:
                # user.name would be ignored, and doas (proxy) needs cluster-side
                # impersonation rights: better refuse than act as someone else.
                raise ConfigError(
                    "WebHDFS with kerberos=true takes its identity from the ticket; drop 'user'"
                )
            try:
                from hdfs.ext.kerberos import KerberosClient
            except ImportError as e:
                raise ConfigError(
                    "WebHDFS with kerberos=true needs the requests-kerberos package "
                    f"(pip install requests-kerberos): {e}"
                ) from e
            # The same one extra operation as _Client (the client's metaclass makes it a method).
            kerberos_client = type("_KerberosClient", (KerberosClient,), {"_get_server_defaults": _Request("GET")})
            self._client = kerberos_client(namenode_url, session=self._session, timeout=timeout)
        else:
            self._client = _Client(namenode_url, user=user, session=self._session, timeout=timeout)

    @classmethod
    def from_url(cls, url: str, **options) -> tuple[WebHdfsBackend, str]:
        """Build from ``webhdfs://[user@]host[:port]/path`` (``hdfs://`` alike), or ``swebhdfs://`` for
        WebHDFS over https (certificate and host name verified by requests: the system CAs, or the bundle
        named by REQUESTS_CA_BUNDLE).

        The port is the namenode's HTTP(S) port (default 9870, 9871 for swebhdfs), not its RPC port.
        Options: ``user``, ``kerberos`` (bool), ``timeout``, ``block_size`` (of new files).
        """
        unknown = set(options) - {"user", "kerberos", "timeout", "block_size"}
        if unknown:
            raise ConfigError(f"unknown WebHDFS option(s): {sorted(unknown)}")
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigError(f"{url!r}: a WebHDFS URL needs the namenode host")
        if parts.query or parts.fragment:
            raise ConfigError(f"{url!r}: unexpected query or fragment in a WebHDFS URL")
        try:
            tls = parts.scheme.lower() == "swebhdfs"
            port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
        except ValueError as e:
            raise ConfigError(f"{url!r}: bad port") from e
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        options.setdefault("user", parts.username)
        path = posixpath.normpath(check_path(unquote(parts.path) or "/"))
        return cls(f"{'https' if tls else 'http'}://{host}:{port}", **options), path

    def uri(self, path: str) -> str:
        """``webhdfs://host:port/path`` (``swebhdfs://`` over https)."""
        return f"{self._scheme}://{self._netloc}{quote(self._checked(path))}"

    def stat(self, path: str) -> FileStat | None:
        """GETFILESTATUS; None on FileNotFoundException only."""
        path = self._checked(path)
        try:
            with _hdfs_errors(f"stat {self.uri(path)}"):
                status = self._client.status(path)
        except NotFound:
            return None
        return _file_stat(path, status)

    def list(self, path: str) -> list[FileStat]:
        """LISTSTATUS of a folder, sorted by name."""
        path = self._checked(path)
        with _hdfs_errors(f"list {self.uri(path)}"):
            statuses = self._client.list(path, status=True)
        entries = [_file_stat(posixpath.join(path, name), status) for name, status in statuses]
        return sorted(entries, key=lambda entry: entry.name)

    @contextlib.contextmanager
    def open_read(self, path: str, offset: int = 0) -> Iterator[BinaryIO]:
        """OPEN, streamed: the body is read as the caller reads."""
        path = self._checked(path)
        offset = self._check_offset(offset)
        what = f"read {self.uri(path)}"
        if offset:
            # WebHDFS refuses offset == length, which a resumed copy that had
            # already finished asks for; answer that one here.
            found = self.stat(path)
            if found is None:
                raise NotFound(f"{what}: file does not exist")
            if offset > found.size:
                raise InvalidInput(f"{what}: offset {offset} is past the end ({found.size} bytes)")
            if offset == found.size:
                yield io.BytesIO()
                return
        with contextlib.ExitStack() as stack:
            with _hdfs_errors(what):
                raw = stack.enter_context(self._client.read(path, offset=offset))
            yield io.BufferedReader(MappedReadStream(raw, _hdfs_errors, what), buffer_size=READ_CHUNK)

    def mkdir(self, path: str) -> None:
        """MKDIRS, which creates parents and accepts an existing folder."""
        path = self._checked(path)
        with _hdfs_errors(f"mkdir {self.uri(path)}"):
            self._client.makedirs(path)

    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        """RENAME, made to fail loudly where WebHDFS answers a bare false.

        WebHDFS moves ``src`` into ``dst`` when ``dst`` is a folder, so that
        is refused up front.  With ``overwrite`` an existing file is deleted
        first: there is a moment when neither file is at ``dst``.
        """
        src, dst = self._checked(src), self._checked(dst)
        what = f"rename {self.uri(src)} -> {self.uri(dst)}"
        existing = self.stat(dst)
        if existing is not None and (existing.is_dir or not overwrite):
            raise AlreadyExists(f"{what}: destination exists")
        if existing is not None:
            self.delete(dst)
        with _hdfs_errors(what):
            try:
                self._client.rename(src, dst)
                return
            except HdfsError as e:
                # The client turns RENAME's bare false into this message-only
                # error; anything else is a real RemoteException.
                if e.exception or not e.message.startswith("Unable to rename"):
                    raise
                refused = e
        # false means: source missing, destination taken, or its folder missing.
        if self.stat(src) is None:
            raise NotFound(f"{what}: source does not exist") from refused
        if self.stat(dst) is not None:
            raise AlreadyExists(f"{what}: destination exists") from refused
        raise NotFound(f"{what}: destination folder does not exist") from refused

    def delete(self, path: str, *, recursive: bool = False) -> None:
        """DELETE; WebHDFS answers false for a missing path, which is fine."""
        path = self._checked(path)
        with _hdfs_errors(f"delete {self.uri(path)}"):
            self._client.delete(path, recursive=recursive)

    def _create(self, path: str, chunks: Iterable[bytes]) -> None:
        """Two-step CREATE streaming ``chunks`` as a chunked request body."""
        source_errors: list[Exception] = []

        def guarded() -> Iterator[bytes]:
            # A source that fails ends the upload cleanly instead of aborting
            # it: the datanode then closes the file before we delete it,
            # whereas an aborted request races with that delete and can leave
            # the temp behind.
            try:
                yield from chunks
            except Exception as e:
                source_errors.append(e)

        spec = self.checksum_spec()
        block_size = spec.block_size if isinstance(spec, ChecksumSpec) else self._block_size
        with _hdfs_errors(f"write {self.uri(path)}"):
            self._client.write(path, data=guarded(), overwrite=False, blocksize=block_size)
        if source_errors:
            raise source_errors[0]

    def checksum_spec(self) -> ChecksumSpec | str:
        """How the files this backend writes are checksummed by the cluster, or why that is unknown.

        From the NameNode's server defaults (GETSERVERDEFAULTS: checksum type and bytes per
        checksum, the default block size unless ``block_size`` is set), asked once.  New files
        are written with exactly this block size, so their file checksum can be computed locally.
        """
        if self._spec is None:
            try:
                with _hdfs_errors(f"server defaults of {self.uri('/')}"):
                    defaults = self._client._get_server_defaults("/").json()["FsServerDefaults"]
                crc = CHECKSUM_TYPES.get(defaults.get("checksumType"), f"type {defaults.get('checksumType')}")
                self._spec = ChecksumSpec(self._block_size or int(defaults["blockSize"]),
                                          int(defaults["bytesPerChecksum"]), crc)
            except (NotFound, InvalidInput, FatalError, KeyError, ValueError, TypeError) as e:
                # An older NameNode without GETSERVERDEFAULTS: verify by reading back.
                self._spec = f"the NameNode did not give its checksum settings ({e})"
        return self._spec

    def file_checksum(self, path: str) -> tuple[dict, int]:
        """The cluster's file checksum of ``path`` (GETFILECHECKSUM: computed by the DataNodes from their
        CRC files, the data is not sent) and the file's block size."""
        path = self._checked(path)
        with _hdfs_errors(f"checksum {self.uri(path)}"):
            status = self._client.status(path)
            return self._client.checksum(path), int(status.get("blockSize") or 0)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._session.close()


def _file_stat(path: str, status: dict) -> FileStat:
    """Our FileStat from a WebHDFS FileStatus object."""
    is_dir = status["type"] == "DIRECTORY"
    return FileStat(path, 0 if is_dir else status["length"], status["modificationTime"] / 1000, is_dir)
