"""How the SFTP connector names a server that goes away: a connection failure (retried), never a refused login or
a fatal command failure.  Found by the fault campaign's sshd-outage and black-hole rows of the restores: a
connection dropped mid-authentication became ``AuthFailed``, a silent server's authentication timeout too, and
a ``sha256sum`` whose connection ended (paramiko's exit status -1) a ``FatalError``; each failed a whole
restore at once.  The server here is paramiko's own SSH server on loopback, made to misbehave at one step."""

from __future__ import annotations

import socket
import threading
import time

import paramiko
import pytest

from base.errors import AuthFailed, ConnectionFailed
from connectors.sftp import SftpSession, SftpTarget


class _Server(paramiko.ServerInterface):
    def __init__(self, transport: paramiko.Transport, mode: str):
        self.transport, self.mode = transport, mode

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        if self.mode == "drop":  # the server goes away mid-authentication (sshd stopped, the link cut)
            self.transport.sock.shutdown(socket.SHUT_RDWR)
        if self.mode == "silent":  # a black hole: no answer
            time.sleep(4)
        return paramiko.AUTH_SUCCESSFUL if self.mode == "exec-drop" else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        threading.Timer(1.0, lambda: self.transport.sock.shutdown(socket.SHUT_RDWR)).start()  # gone mid-command
        return True


@pytest.fixture
def server(tmp_path):
    """An SSH server on a loopback port for one connection: (the project's target for it, its keys, mode switch)."""
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
    mode = {"mode": "drop"}
    done = threading.Event()

    def serve():
        conn, _ = listener.accept()
        transport = paramiko.Transport(conn)
        transport.add_server_key(key)
        try:
            transport.start_server(server=_Server(transport, mode["mode"]))
            channel = transport.accept(10) if mode["mode"] == "exec-drop" else None  # the only mode with a channel
            done.wait(15)  # the connection (and the channel: one collected is closed) lives until the test ends
            del channel
        except Exception:  # noqa: BLE001 - the client side is what is asserted
            pass
        finally:
            transport.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    target = SftpTarget.for_address("127.0.0.1", port, "backup", key_file, known, connect_timeout=2)
    yield target, client_key, port, mode
    listener.close()
    done.set()
    thread.join(15)


def test_a_connection_dropped_during_authentication_is_a_connection_failure(server):
    target, _, _, mode = server
    mode["mode"] = "drop"
    with pytest.raises(ConnectionFailed, match="no answer to authentication") as raised:
        target.connect()
    assert not isinstance(raised.value, AuthFailed)


@pytest.mark.clock  # bounded by the connect timeout plus 1.5 s
def test_a_server_silent_during_authentication_is_a_connection_failure_within_the_connect_timeout(server):
    target, _, _, mode = server
    mode["mode"] = "silent"
    began = time.monotonic()
    with pytest.raises(ConnectionFailed, match="no answer to authentication"):
        target.connect()
    assert time.monotonic() - began < 3.5  # sftp.connect_timeout (2 s), not paramiko's 30 s


def test_a_refused_key_is_still_an_authentication_failure(server):
    target, _, _, mode = server
    mode["mode"] = "refuse"
    with pytest.raises(AuthFailed, match="authentication refused"):
        target.connect()


def test_a_sha256sum_whose_connection_ends_is_a_connection_failure(server):
    target, client_key, port, mode = server
    mode["mode"] = "exec-drop"
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", port)))
    try:
        transport.connect(username="backup", pkey=client_key)  # host key: the fixture's own server
        with pytest.raises(ConnectionFailed, match="connection ended before sha256sum's exit status"):
            SftpSession(target, transport, None).sha256("/tmp/archive.csv.gz")
    finally:
        transport.close()


def test_an_sftp_stream_out_of_step_is_a_connection_failure():
    """A black hole that stalled a read in the middle of a packet left paramiko's SFTP stream out of step: its
    ``SFTPError("Garbage packet received")`` (not an SSHException, not an OSError) failed a restore at once as
    fatal (campaign, restore-edge-export black-hole row).  paramiko's own packet reader is fed such bytes here."""
    import paramiko.sftp

    from storage.sftp import _sftp_errors

    ours, theirs = socket.socketpair()
    try:
        reader = paramiko.sftp.BaseSFTP()
        reader.sock = ours
        theirs.sendall(b"\x01\x00\x00\x05hello")  # a length whose first byte is set: not an SFTP packet
        with pytest.raises(ConnectionFailed, match="SFTP protocol stream broken: Garbage packet received"):
            with _sftp_errors("read /backups/x.csv.gz"):
                reader._read_packet()
    finally:
        ours.close()
        theirs.close()
