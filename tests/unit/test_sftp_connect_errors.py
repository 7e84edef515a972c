"""How ``SftpTarget.connect`` names a server that goes away during authentication: a connection failure
(retried), not a refused login (fatal).  Found by the fault campaign's sshd-outage row of restore-customer-files:
the edge node's connection dropped mid-authentication became ``AuthFailed`` and failed the whole restore.
The server here is paramiko's own SSH server on loopback, which drops the connection (or refuses the key)
when the client authenticates."""

from __future__ import annotations

import socket
import threading

import paramiko
import pytest

from base.errors import AuthFailed, ConnectionFailed
from connectors.sftp import SftpTarget


class _Server(paramiko.ServerInterface):
    def __init__(self, transport: paramiko.Transport, drop: bool):
        self.transport, self.drop = transport, drop

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        if self.drop:  # the server goes away mid-authentication (sshd stopped, the link cut)
            self.transport.sock.shutdown(socket.SHUT_RDWR)
        return paramiko.AUTH_FAILED


@pytest.fixture
def server(tmp_path):
    """An SSH server on a loopback port answering one connection; (target of the project, drop-or-refuse switch)."""
    key = paramiko.RSAKey.generate(2048)
    client_key = paramiko.RSAKey.generate(2048)
    key_file = tmp_path / "client_key"
    client_key.write_private_key_file(str(key_file))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {key.get_name()} {key.get_base64()}\n")
    mode = {"drop": True}

    def serve():
        conn, _ = listener.accept()
        transport = paramiko.Transport(conn)
        transport.add_server_key(key)
        try:
            transport.start_server(server=_Server(transport, mode["drop"]))
            transport.accept(10)
        except Exception:  # noqa: BLE001 - the client side is what is asserted
            pass
        finally:
            transport.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    target = SftpTarget.for_address("127.0.0.1", port, "backup", key_file, known, connect_timeout=5)
    yield target, mode
    listener.close()
    thread.join(15)


def test_a_connection_dropped_during_authentication_is_a_connection_failure(server):
    target, mode = server
    mode["drop"] = True
    with pytest.raises(ConnectionFailed, match="connection lost during authentication") as raised:
        target.connect()
    assert not isinstance(raised.value, AuthFailed)


def test_a_refused_key_is_still_an_authentication_failure(server):
    target, mode = server
    mode["drop"] = False
    with pytest.raises(AuthFailed, match="authentication refused"):
        target.connect()
