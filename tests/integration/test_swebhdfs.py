"""``swebhdfs://`` locations: WebHDFS over https with the certificate verified, on the project's WebHDFS test
server (tests/webhdfs_server.py) behind TLS in this process; no JVM."""

from __future__ import annotations

import ssl

import pytest

from base.errors import AuthFailed
from tests.integration.test_alert_channels import self_signed
from tests.webhdfs_server import WebHdfsTestServer, wait_for_port


@pytest.fixture(scope="module")
def swebhdfs(tmp_path_factory):
    """(port, CA file) of a WebHDFS server on 127.0.0.1 speaking https only, its redirects included."""
    cert, key = self_signed(tmp_path_factory.mktemp("swebhdfs-tls"), "namenode", "IP:127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with WebHdfsTestServer(tmp_path_factory.mktemp("swebhdfs-root"), tls_context=context) as server:
        wait_for_port(server.host, server.port)
        yield server.port, cert


def test_swebhdfs_refuses_a_certificate_it_cannot_verify(swebhdfs, monkeypatch):
    from storage import open_backend

    port, _ = swebhdfs
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    backend, folder = open_backend(f"swebhdfs://mediation@127.0.0.1:{port}/backup")
    with backend, pytest.raises(AuthFailed, match="TLS certificate refused"):
        backend.mkdir(folder)


def test_swebhdfs_with_the_namenodes_ca_writes_and_reads(swebhdfs, monkeypatch, tmp_path):
    from storage import open_backend

    port, ca = swebhdfs
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))  # requests' way to name the trusted CAs
    backend, folder = open_backend(f"swebhdfs://mediation@127.0.0.1:{port}/backup")
    with backend:
        backend.mkdir(folder)
        backend.write_atomic(f"{folder}/a.csv", [b"x;1\n"])
        with backend.open_read(f"{folder}/a.csv") as got:
            assert got.read() == b"x;1\n"
        assert backend.uri(f"{folder}/a.csv") == f"swebhdfs://127.0.0.1:{port}/backup/a.csv"
