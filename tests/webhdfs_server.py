"""A WebHDFS server for tests: one namenode and one datanode in one HTTP server.

It follows the Hadoop WebHDFS REST API
(https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html)
closely enough for the ``hdfs`` package's unmodified ``InsecureClient``.  HDFS
``/`` is a real local folder (``root``), so tests can inspect what was written.

    http://HOST:PORT/webhdfs/v1/<PATH>?op=...&user.name=...           namenode
    http://HOST:PORT/datanode/webhdfs/v1/<PATH>?op=...&namenoderpcaddress=...
                                                                      datanode

Behaviour copied from HDFS, because our backend must cope with it:

* CREATE and APPEND take two steps: the namenode answers 307 with a
  ``Location`` on the datanode (or 200 ``{"Location": ...}`` with
  ``noredirect=true``) and reads no data; the datanode step takes the body
  (``Content-Length`` or chunked) and answers 201 Created (CREATE) or 200.
* The namenode checks nothing for CREATE: the datanode creates the file, so
  FileAlreadyExistsException (403, overwrite=false on an existing file) comes
  from the second step.  OPEN, APPEND and GETFILECHECKSUM are checked at the
  namenode (404 "File /x not found.", before any redirect); so is OPEN's
  offset: ``offset >= length`` of a non-empty file is a 403 IOException.
* RENAME answers ``{"boolean": false}`` rather than failing when the source
  is missing, the destination exists or its folder is missing; a destination
  that is an existing folder receives the source inside it.
* DELETE of a missing path answers ``{"boolean": false}``.
* An upload cut short keeps the bytes received (HDFS closes the file).
* Errors are RemoteException JSON: FileNotFoundException 404,
  IllegalArgumentException 400 (unknown op, bad parameter),
  InvalidPathException 400 (a ``:`` in a created name, as HDFS refuses),
  FileAlreadyExistsException, ParentNotDirectoryException,
  PathIsNotEmptyDirectoryException, IOException and AccessControlException 403.
* Query parameters are matched case-insensitively in value (``False``, as
  the client sends it) and the first of repeated parameters wins (the client
  repeats ``user.name`` on the datanode step).

Not like HDFS:

* GETFILECHECKSUM is deterministic in the content and shaped like HDFS's
  MD5-of-MD5-of-CRC (28 bytes: bytesPerCRC, crcPerBlock, MD5) but uses
  zlib's CRC32 rather than CRC32C and is NOT bit-compatible with a real
  cluster's value.  A backend must never compare it with a value computed
  locally; read the data back and hash it instead.
* Owner and group are fixed per server; permissions are the local file's
  mode bits.  There is no security: ``allowed_users`` only emulates
  AccessControlException for other ``user.name`` values.

Run it by hand with ``python tests/webhdfs_server.py --root DIR --port N``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import posixpath
import shutil
import signal
import socket
import stat as stat_mode
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

log = logging.getLogger(__name__)

PREFIX = "/webhdfs/v1"
DATANODE_PREFIX = "/datanode" + PREFIX
NAMENODE_RPC_ADDRESS = "localhost:8020"  # only echoed, like a real datanode needs it
BLOCK_SIZE = 128 * 1024 * 1024
BYTES_PER_CRC = 512
IO_CHUNK = 64 * 1024

# RemoteException name -> (HTTP status, Java class), as Hadoop's ExceptionHandler maps them.
_EXCEPTIONS = {
    "FileNotFoundException": (404, "java.io.FileNotFoundException"),
    "IllegalArgumentException": (400, "java.lang.IllegalArgumentException"),
    "InvalidPathException": (400, "org.apache.hadoop.fs.InvalidPathException"),
    "IOException": (403, "java.io.IOException"),
    "FileAlreadyExistsException": (403, "org.apache.hadoop.fs.FileAlreadyExistsException"),
    "ParentNotDirectoryException": (403, "org.apache.hadoop.fs.ParentNotDirectoryException"),
    "PathIsNotEmptyDirectoryException": (
        403,
        "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException",
    ),
    "AccessControlException": (403, "org.apache.hadoop.security.AccessControlException"),
    "RuntimeException": (500, "java.lang.RuntimeException"),
}

# Java enum holding each HTTP method's ops, named in "unknown op" messages.
_OP_ENUMS = {"GET": "GetOpParam", "PUT": "PutOpParam", "POST": "PostOpParam", "DELETE": "DeleteOpParam"}


class RemoteError(Exception):
    """An error answered as RemoteException JSON."""

    def __init__(self, exception: str, message: str) -> None:
        super().__init__(message)
        self.exception = exception
        self.status, self.java_class = _EXCEPTIONS[exception]

    def body(self) -> dict:
        """The JSON document WebHDFS answers with."""
        return {
            "RemoteException": {
                "exception": self.exception,
                "javaClassName": self.java_class,
                "message": str(self),
            }
        }


class _Truncated(Exception):
    """The client went away in the middle of a request body."""


class _Store:
    """The namespace: HDFS paths mapped onto a local folder."""

    def __init__(self, root: Path, owner: str, group: str) -> None:
        self.root = root
        self.owner = owner
        self.group = group
        # Namespace changes are atomic on a namenode; one lock gives us that.
        self.lock = threading.RLock()

    def local(self, path: str) -> Path:
        """The local path behind an HDFS path."""
        return self.root.joinpath(*path.strip("/").split("/")) if path != "/" else self.root

    def stat(self, path: str) -> os.stat_result | None:
        """The local stat of an HDFS path, or None."""
        try:
            return os.stat(self.local(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def status(self, path: str, suffix: str) -> dict | None:
        """A WebHDFS FileStatus object, or None if the path is missing."""
        found = self.stat(path)
        if found is None:
            return None
        is_dir = stat_mode.S_ISDIR(found.st_mode)
        children = 0
        if is_dir:
            try:
                children = len(os.listdir(self.local(path)))
            except FileNotFoundError:
                return None
        return {
            "accessTime": 0 if is_dir else found.st_atime_ns // 1_000_000,
            "blockSize": 0 if is_dir else BLOCK_SIZE,
            "childrenNum": children,
            "fileId": found.st_ino,
            "group": self.group,
            "length": 0 if is_dir else found.st_size,
            "modificationTime": found.st_mtime_ns // 1_000_000,
            "owner": self.owner,
            "pathSuffix": suffix,
            "permission": format(stat_mode.S_IMODE(found.st_mode), "o"),
            "replication": 0 if is_dir else 1,
            "storagePolicy": 0,
            "type": "DIRECTORY" if is_dir else "FILE",
        }

    def make_parents(self, path: str, permission: int) -> None:
        """Create the missing ancestors of ``path``, as CREATE and MKDIRS do."""
        current = "/"
        for name in path.strip("/").split("/")[:-1]:
            current = posixpath.join(current, name)
            found = self.stat(current)
            if found is None:
                os.mkdir(self.local(current))
                os.chmod(self.local(current), permission)
            elif not stat_mode.S_ISDIR(found.st_mode):
                raise RemoteError("ParentNotDirectoryException", f"{current} (is not a directory)")


def _check_name(path: str) -> None:
    """Refuse a name HDFS would not create (DFSUtil.isValidName)."""
    if ":" in path:
        raise RemoteError("InvalidPathException", f"Invalid path name Invalid file name: {path}")


def _normalise(path: str) -> str:
    """The normalised absolute HDFS path."""
    names = [name for name in path.split("/") if name not in ("", ".")]
    if ".." in names or "\0" in path:
        raise RemoteError("InvalidPathException", f"Invalid path name {path!r}")
    return "/" + "/".join(names)


def _url_path(encoded: str) -> str:
    """The HDFS path from the percent-encoded rest of a URL path."""
    try:
        return _normalise(unquote(encoded, errors="strict"))
    except UnicodeDecodeError as e:
        raise RemoteError("InvalidPathException", f"Invalid path name {encoded}") from e


def _bool_param(params: dict, name: str, default: bool) -> bool:
    """A boolean query parameter; Hadoop accepts any case."""
    value = params.get(name, "")
    if value == "":
        return default
    if value.lower() not in ("true", "false"):
        raise RemoteError(
            "IllegalArgumentException",
            f'Invalid value for webhdfs parameter "{name}": Failed to parse "{value}" as a boolean',
        )
    return value.lower() == "true"


def _long_param(params: dict, name: str, default: int | None) -> int | None:
    """A non-negative integer query parameter."""
    value = params.get(name, "")
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise RemoteError(
            "IllegalArgumentException",
            f'Invalid value for webhdfs parameter "{name}": {value!r} must be >= 0',
        )
    return number


def _permission_param(params: dict, default: int) -> int:
    """The octal ``permission`` parameter."""
    value = params.get("permission", "")
    if value == "":
        return default
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o1777:
        raise RemoteError(
            "IllegalArgumentException",
            f'Invalid value for webhdfs parameter "permission": {value!r} is not an octal mode',
        )
    return mode


def _checksum(local: Path) -> dict:
    """An HDFS-shaped MD5-of-MD5-of-CRC checksum; NOT HDFS's exact value."""
    blocks = hashlib.md5()
    crcs = hashlib.md5()
    block_count = 0
    in_block = 0
    with open(local, "rb") as stream:
        while buffer := stream.read(IO_CHUNK):
            for start in range(0, len(buffer), BYTES_PER_CRC):
                crc = zlib.crc32(buffer[start : start + BYTES_PER_CRC])
                crcs.update(crc.to_bytes(4, "big"))
            in_block += len(buffer)
            if in_block >= BLOCK_SIZE:
                blocks.update(crcs.digest())
                block_count += 1
                crcs, in_block = hashlib.md5(), 0
    if in_block or not block_count:
        blocks.update(crcs.digest())
        block_count += 1
    # HDFS reports 0 CRCs per block when the file has a single block.
    crc_per_block = BLOCK_SIZE // BYTES_PER_CRC if block_count > 1 else 0
    raw = struct.pack(">iq", BYTES_PER_CRC, crc_per_block) + blocks.digest()
    return {
        "FileChecksum": {
            "algorithm": f"MD5-of-{crc_per_block}MD5-of-{BYTES_PER_CRC}CRC32C",
            "bytes": raw.hex(),
            "length": len(raw),
        }
    }


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive as the client's pool expects."""

    protocol_version = "HTTP/1.1"
    server_version = "WebHdfsTestServer/1"
    timeout = 60  # idle keep-alive connections do not pin a thread forever
    # Headers and body go out as separate writes; with Nagle on, each answer
    # would wait for the client's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True
    server: _HttpServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- request plumbing ----------------------------------------------------

    def _handle(self, method: str) -> None:
        """Route one request and answer errors as RemoteException JSON."""
        self._body_state = "pending"
        try:
            self._route(method)
        except RemoteError as e:
            self._answer_error(e)
        except (_Truncated, ConnectionError):
            self.close_connection = True
        except Exception as e:
            # A bug here must fail the test as an error, not pass for a
            # dropped connection that the backend would call transient.
            log.exception("test server bug on %s %s", method, self.path)
            self.close_connection = True
            self._answer_error(RemoteError("RuntimeException", repr(e)))

    def _answer_error(self, error: RemoteError) -> None:
        """Send ``error`` once the request body is out of the way."""
        try:
            self._drain()
            self._send_json(error.status, error.body())
        except (_Truncated, ConnectionError):
            self.close_connection = True

    def _route(self, method: str) -> None:
        """Dispatch to the namenode or datanode operation."""
        url = urlsplit(self.path)
        # Like Jersey's @QueryParam: the first of repeated parameters wins.
        params = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        op = params.get("op", "").upper()
        if url.path.startswith(DATANODE_PREFIX):
            path = _url_path(url.path[len(DATANODE_PREFIX) :])
            operation = _DATANODE_OPS.get((method, op))
            if operation and not params.get("namenoderpcaddress"):
                raise RemoteError("IllegalArgumentException", "Namenode RPC address is not specified.")
        elif url.path.startswith(PREFIX):
            path = _url_path(url.path[len(PREFIX) :])
            operation = _NAMENODE_OPS.get((method, op))
            self._check_user(params, path)
        else:
            self._drain()
            self._send_bytes(404, b"Not a WebHDFS URL\n", "text/plain")
            return
        if operation is None:
            raise RemoteError(
                "IllegalArgumentException",
                f'Invalid value for webhdfs parameter "op": No enum constant '
                f"org.apache.hadoop.hdfs.web.resources.{_OP_ENUMS[method]}.Op.{op}",
            )
        operation(self, path, params)

    def _check_user(self, params: dict, path: str) -> None:
        """Emulate a permission check against ``allowed_users``."""
        allowed = self.server.allowed_users
        user = params.get("user.name") or "dr.who"
        if allowed is not None and user not in allowed:
            raise RemoteError(
                "AccessControlException",
                f'Permission denied: user={user}, access=ALL, inode="{path}"',
            )

    def _body(self) -> Iterator[bytes]:
        """Yield the request body as it arrives, raw or chunked."""
        self._body_state = "reading"
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    raise _Truncated()
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError as e:
                    raise _Truncated() from e
                if size == 0:
                    break
                yield from self._read_exact(size)
                if self.rfile.readline(3).strip():
                    raise _Truncated()
            while self.rfile.readline(1024).strip():
                pass  # trailer fields, unused
        else:
            yield from self._read_exact(int(self.headers.get("Content-Length") or 0))
        self._body_state = "done"

    def _read_exact(self, size: int) -> Iterator[bytes]:
        """Yield exactly ``size`` body bytes."""
        while size:
            chunk = self.rfile.read(min(size, IO_CHUNK))
            if not chunk:
                raise _Truncated()
            size -= len(chunk)
            yield chunk

    def _drain(self) -> None:
        """Consume an unread body so the connection can serve the next request."""
        if self._body_state == "pending":
            for _ in self._body():
                pass
        elif self._body_state == "reading":
            self.close_connection = True

    def _send_bytes(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        """Answer with a complete body."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, document: dict) -> None:
        """Answer with a JSON document."""
        self._send_bytes(status, json.dumps(document).encode(), "application/json")

    def _base_url(self) -> str:
        """This server's URL as the client reached it."""
        host, port = self.server.server_address[:2]
        scheme = "https" if self.server.tls else "http"
        if host in ("", "0.0.0.0"):
            return f"{scheme}://{self.headers.get('Host', f'localhost:{port}')}"
        return f"{scheme}://{host}:{port}"

    # -- namenode --------------------------------------------------------------

    def _nn_redirect(self, path: str, params: dict) -> None:
        """CREATE, APPEND, OPEN, GETFILECHECKSUM: point the client at the datanode."""
        self._drain()  # the namenode never takes the data
        op = params["op"].upper()
        if op != "CREATE":
            found = self.server.store.stat(path)
            if found is None:
                raise RemoteError("FileNotFoundException", f"File {path} not found.")
            if stat_mode.S_ISDIR(found.st_mode):
                raise RemoteError("FileNotFoundException", f"Path is not a file: {path}")
            if op == "OPEN":
                offset = _long_param(params, "offset", 0)
                if found.st_size > 0 and offset >= found.st_size:
                    raise RemoteError(
                        "IOException",
                        f"Offset={offset} out of the range [0, {found.st_size}); OPEN, path={path}",
                    )
        forwarded = {k: v for k, v in params.items() if k != "noredirect"}
        forwarded["op"] = op
        forwarded["namenoderpcaddress"] = NAMENODE_RPC_ADDRESS
        location = f"{self._base_url()}{DATANODE_PREFIX}{quote(path)}?{urlencode(forwarded)}"
        if _bool_param(params, "noredirect", False):
            self._send_json(200, {"Location": location})
        else:
            self._send_bytes(307, b"", "application/octet-stream", {"Location": location})

    def _nn_get_file_status(self, path: str, params: dict) -> None:
        self._drain()
        status = self.server.store.status(path, "")
        if status is None:
            raise RemoteError("FileNotFoundException", f"File does not exist: {path}")
        self._send_json(200, {"FileStatus": status})

    def _nn_list_status(self, path: str, params: dict) -> None:
        self._drain()
        store = self.server.store
        status = store.status(path, "")
        if status is None:
            raise RemoteError("FileNotFoundException", f"File {path} does not exist.")
        if status["type"] == "FILE":
            statuses = [status]
        else:
            try:
                names = os.listdir(store.local(path))
            except FileNotFoundError as e:
                raise RemoteError("FileNotFoundException", f"File {path} does not exist.") from e
            # HDFS lists children in byte order of their UTF-8 names.
            found = (store.status(posixpath.join(path, n), n) for n in sorted(names, key=str.encode))
            statuses = [s for s in found if s is not None]
        self._send_json(200, {"FileStatuses": {"FileStatus": statuses}})

    def _nn_get_home_directory(self, path: str, params: dict) -> None:
        self._drain()
        self._send_json(200, {"Path": f"/user/{params.get('user.name') or 'dr.who'}"})

    def _nn_mkdirs(self, path: str, params: dict) -> None:
        self._drain()
        _check_name(path)
        permission = _permission_param(params, 0o755)
        store = self.server.store
        with store.lock:
            store.make_parents(path, permission)
            found = store.stat(path)
            if found is None:
                os.mkdir(store.local(path))
                os.chmod(store.local(path), permission)
            elif not stat_mode.S_ISDIR(found.st_mode):
                raise RemoteError("FileAlreadyExistsException", f"Path is not a directory: {path}")
        self._send_json(200, {"boolean": True})

    def _nn_rename(self, path: str, params: dict) -> None:
        self._drain()
        destination = params.get("destination", "")
        if not destination.startswith("/"):
            raise RemoteError(
                "IllegalArgumentException",
                f'Invalid parameter value: destination = "{destination}" is not an absolute path.',
            )
        dst = _normalise(destination)
        _check_name(dst)
        store = self.server.store
        with store.lock:
            self._send_json(200, {"boolean": self._rename(store, path, dst)})

    @staticmethod
    def _rename(store: _Store, src: str, dst: str) -> bool:
        """HDFS's old-style rename: false instead of an error."""
        if src == "/" or store.stat(src) is None:
            return False
        target = store.stat(dst)
        if target is not None and stat_mode.S_ISDIR(target.st_mode):
            dst = posixpath.join(dst, posixpath.basename(src))
            target = store.stat(dst)
        if dst == src:
            return True
        if target is not None or dst.startswith(src + "/"):
            return False
        parent = store.stat(posixpath.dirname(dst))
        if parent is None or not stat_mode.S_ISDIR(parent.st_mode):
            return False
        os.rename(store.local(src), store.local(dst))
        return True

    def _nn_delete(self, path: str, params: dict) -> None:
        self._drain()
        recursive = _bool_param(params, "recursive", False)
        store = self.server.store
        with store.lock:
            found = store.stat(path)
            if path == "/" or found is None:
                self._send_json(200, {"boolean": False})
                return
            local = store.local(path)
            if not stat_mode.S_ISDIR(found.st_mode):
                os.unlink(local)
            elif recursive:
                shutil.rmtree(local)
            elif os.listdir(local):
                raise RemoteError(
                    "PathIsNotEmptyDirectoryException",
                    f"`{path} is non empty': Directory is not empty",
                )
            else:
                os.rmdir(local)
        self._send_json(200, {"boolean": True})

    # -- datanode --------------------------------------------------------------

    def _dn_create(self, path: str, params: dict) -> None:
        _check_name(path)
        overwrite = _bool_param(params, "overwrite", False)
        permission = _permission_param(params, 0o644)
        store = self.server.store
        local = store.local(path)
        with store.lock:
            store.make_parents(path, 0o755)
            found = store.stat(path)
            if found is not None and stat_mode.S_ISDIR(found.st_mode):
                raise RemoteError("FileAlreadyExistsException", f"{path} already exists as a directory")
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
            try:
                fd = os.open(local, flags, permission)
            except FileExistsError as e:
                raise RemoteError(
                    "FileAlreadyExistsException",
                    f"{path} for client {self.client_address[0]} already exists",
                ) from e
            os.fchmod(fd, permission)
        with open(fd, "wb") as stream:
            for chunk in self._body():
                stream.write(chunk)
        host = urlsplit(self._base_url()).netloc
        self._send_bytes(201, b"", "application/octet-stream", {"Location": f"webhdfs://{host}{quote(path)}"})

    def _dn_append(self, path: str, params: dict) -> None:
        local = self.server.store.local(path)
        try:
            stream = open(local, "ab")
        except (FileNotFoundError, IsADirectoryError) as e:
            raise RemoteError("FileNotFoundException", f"Failed to append to non-existent file {path}") from e
        with stream:
            for chunk in self._body():
                stream.write(chunk)
        self._send_bytes(200, b"", "application/octet-stream")

    def _dn_open(self, path: str, params: dict) -> None:
        self._drain()
        offset = _long_param(params, "offset", 0)
        length = _long_param(params, "length", None)
        try:
            stream = open(self.server.store.local(path), "rb")
        except (FileNotFoundError, IsADirectoryError) as e:
            raise RemoteError("FileNotFoundException", f"File {path} not found.") from e
        with stream:
            size = os.fstat(stream.fileno()).st_size
            if offset > size:
                raise RemoteError(
                    "IOException", f"Offset={offset} out of the range [0, {size}); OPEN, path={path}"
                )
            remaining = size - offset if length is None else min(length, size - offset)
            stream.seek(offset)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(remaining))
            self.end_headers()
            while remaining:
                chunk = stream.read(min(remaining, IO_CHUNK))
                if not chunk:  # truncated under us; the client sees a short body
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _dn_get_file_checksum(self, path: str, params: dict) -> None:
        self._drain()
        try:
            document = _checksum(self.server.store.local(path))
        except (FileNotFoundError, IsADirectoryError) as e:
            raise RemoteError("FileNotFoundException", f"File {path} not found.") from e
        self._send_json(200, document)


_NAMENODE_OPS = {
    ("GET", "OPEN"): _Handler._nn_redirect,
    ("GET", "GETFILECHECKSUM"): _Handler._nn_redirect,
    ("GET", "GETFILESTATUS"): _Handler._nn_get_file_status,
    ("GET", "LISTSTATUS"): _Handler._nn_list_status,
    ("GET", "GETHOMEDIRECTORY"): _Handler._nn_get_home_directory,
    ("PUT", "CREATE"): _Handler._nn_redirect,
    ("PUT", "MKDIRS"): _Handler._nn_mkdirs,
    ("PUT", "RENAME"): _Handler._nn_rename,
    ("POST", "APPEND"): _Handler._nn_redirect,
    ("DELETE", "DELETE"): _Handler._nn_delete,
}

_DATANODE_OPS = {
    ("PUT", "CREATE"): _Handler._dn_create,
    ("POST", "APPEND"): _Handler._dn_append,
    ("GET", "OPEN"): _Handler._dn_open,
    ("GET", "GETFILECHECKSUM"): _Handler._dn_get_file_checksum,
}


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: _Store, allowed_users: frozenset[str] | None,
                 tls_context=None) -> None:
        self.store = store
        self.allowed_users = allowed_users
        self.tls = tls_context is not None
        super().__init__(address, _Handler)
        if tls_context is not None:  # swebhdfs: the same server behind TLS (redirects then say https)
            self.socket = tls_context.wrap_socket(self.socket, server_side=True)


class WebHdfsTestServer:
    """A WebHDFS namenode+datanode serving ``root`` as HDFS ``/``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        owner: str = "hdfs",
        group: str = "supergroup",
        allowed_users: set[str] | None = None,
        tls_context=None,
    ) -> None:
        self.root = Path(root)
        self._tls_context = tls_context
        self.root.mkdir(parents=True, exist_ok=True)
        self._address = (host, port)
        self._store = _Store(self.root, owner, group)
        self._allowed_users = frozenset(allowed_users) if allowed_users is not None else None
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> WebHdfsTestServer:
        """Bind and serve in a background thread; connections are accepted on return."""
        if self._httpd is not None:
            return self
        self._httpd = _HttpServer(self._address, self._store, self._allowed_users, self._tls_context)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="webhdfs-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        self._httpd = self._thread = None

    @property
    def host(self) -> str:
        """The address the server is bound to."""
        return self._require_started().server_address[0]

    @property
    def port(self) -> int:
        """The port the server is bound to (the real one when started with 0)."""
        return self._require_started().server_address[1]

    @property
    def url(self) -> str:
        """The namenode URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def _require_started(self) -> _HttpServer:
        if self._httpd is None:
            raise RuntimeError("the WebHDFS test server is not started")
        return self._httpd

    def __enter__(self) -> WebHdfsTestServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once ``host:port`` accepts TCP connections; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from e
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description="WebHDFS test server (namenode + datanode).")
    parser.add_argument("--root", required=True, help="local folder served as HDFS /")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9870, help="0 picks a free port")
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    # Blocked before the server threads start so they inherit the mask and
    # only sigwait() below receives these signals.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with WebHdfsTestServer(args.root, args.host, args.port) as server:
        print(f"WebHDFS test server on {server.url} serving {server.root}", flush=True)
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()
