"""Backends under conformance test.

Each entry of ``BACKENDS`` opens a URL (plus options) pointing at a fresh,
not yet created folder for one test.  Adding a backend is one factory and one
entry; every conformance test then runs against it too.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from storage import StorageBackend, open_backend
from tests.webhdfs_server import WebHdfsTestServer, wait_for_port


@dataclass
class Case:
    """A backend and an empty folder on it for one test."""

    backend: StorageBackend
    folder: str
    options: dict = field(default_factory=dict)

    def path(self, *names: str) -> str:
        """A path inside the test folder."""
        return "/".join([self.folder, *names])


@contextlib.contextmanager
def _local(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict]]:
    yield str(request.getfixturevalue("tmp_path") / "store"), {}


@contextlib.contextmanager
def _webhdfs(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict]]:
    server = request.getfixturevalue("webhdfs_server")
    yield f"webhdfs://{server.host}:{server.port}/conformance/{uuid.uuid4().hex}", {"user": "backup"}


@contextlib.contextmanager
def _hdfs(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict]]:
    """The local platform's real HDFS (MiniDFSCluster) through WebHDFS, as an ordinary user in a folder it owns."""
    request.getfixturevalue("platform")
    yield f"hdfs://127.0.0.1:{request.getfixturevalue('hdfs_home').port}{HDFS_HOME}/{uuid.uuid4().hex}", \
        {"user": HDFS_USER}


@contextlib.contextmanager
def _sftp(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict]]:
    platform = request.getfixturevalue("platform")  # the local platform's sshd
    settings = request.getfixturevalue("settings")
    folder = str(request.getfixturevalue("tmp_path") / "sftp-store")
    options = {
        "key_file": str(settings.path(settings.sftp.key_file)),
        "known_hosts": str(settings.path(settings.sftp.known_hosts)),
        "connect_timeout": settings.sftp.connect_timeout,
    }
    yield f"sftp://{settings.sftp.host}:{platform.p.ssh_port}{folder}", options


# Given the test's request, yields (url, open_backend options) for a fresh folder.
Factory = Callable[[pytest.FixtureRequest], contextlib.AbstractContextManager[tuple[str, dict]]]

BACKENDS: dict[str, Factory] = {
    "local": _local,
    "hdfs": _hdfs,
    "webhdfs-test-server": _webhdfs,
    "sftp": _sftp,
}

# Not the superuser (who started the NameNode): permissions are checked for every call, as in production.
HDFS_USER = "backup"
HDFS_HOME = "/conformance"


@dataclass
class HdfsHome:
    port: int


@pytest.fixture(scope="session")
def hdfs_home(platform, settings) -> HdfsHome:
    """A folder on the local HDFS owned by HDFS_USER, made by the superuser."""
    from tests.helpers import hdfs

    with hdfs(settings) as admin:
        admin.mkdir(HDFS_HOME)
        admin._client.set_owner(HDFS_HOME, owner=HDFS_USER)
    return HdfsHome(settings.platform.namenode_http_port)


@pytest.fixture(scope="session")
def webhdfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebHdfsTestServer]:
    """One WebHDFS test server for the whole session."""
    with WebHdfsTestServer(tmp_path_factory.mktemp("webhdfs-root")) as server:
        wait_for_port(server.host, server.port)
        yield server


@pytest.fixture(params=list(BACKENDS))
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    """Every backend in turn, with an empty folder."""
    with BACKENDS[request.param](request) as (url, options):
        backend, folder = open_backend(url, **options)
        with backend:
            backend.mkdir(folder)
            yield Case(backend, folder, options)
