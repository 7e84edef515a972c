"""Host key checks against the platform's real sshd (ed25519 and RSA host keys) with known_hosts files that
hold only one key type: the paramiko engine verifies with the type it knows (as OpenSSH does), and says
CHANGED only when a key of that type differs.  Starts only sshd (no JVM)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from base.errors import HostKeyMismatch


@pytest.fixture(scope="module")
def sshd(settings):
    from local_platform.services import LocalPlatform

    plat = LocalPlatform(settings)
    report = plat.up(only=["sshd"], timeout=60)
    yield plat.ssh_dir()
    if report.get("sshd") == "started":
        plat.down(only=["sshd"])


def _target(settings, known_hosts: Path, engine: str = "paramiko"):
    from config.settings import SftpSettings
    from connectors.sftp import SftpTarget

    key = settings.path(settings.sftp.key_file)
    cfg = SftpSettings(host="127.0.0.1", port=settings.platform.ssh_port, key_file=key, known_hosts=known_hosts,
                       remote_dir=settings.sftp.remote_dir, connect_timeout=5, engine=engine)
    return SftpTarget(cfg, key, known_hosts)


def _known_hosts(tmp_path: Path, settings, pub: Path) -> Path:
    kind, blob = pub.read_text().split()[:2]
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:{settings.platform.ssh_port} {kind} {blob}\n")
    return path


def test_known_hosts_with_only_the_rsa_key_is_verified_with_it(settings, sshd, tmp_path):
    hosts = _known_hosts(tmp_path, settings, sshd / "host_rsa.pub")
    with _target(settings, hosts).connect() as sess:  # today: "host key has CHANGED" (server prefers ed25519)
        assert sess.listdir("/") != []
        assert sess.transport.get_remote_server_key().get_name() == "ssh-rsa"


def test_openssh_engine_accepts_the_same_rsa_only_known_hosts(settings, sshd, tmp_path):
    from connectors.sftp import upload

    hosts = _known_hosts(tmp_path, settings, sshd / "host_rsa.pub")
    local = tmp_path / "a.bin"
    local.write_bytes(b"x" * 1000)
    remote = str(tmp_path / "remote.bin")  # the sshd is this machine: the remote path is local too
    upload(_target(settings, hosts, engine="openssh"), local, remote)
    assert Path(remote).read_bytes() == local.read_bytes()


def test_another_rsa_key_is_reported_as_changed(settings, sshd, tmp_path):
    other = tmp_path / "other_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(other)], check=True)
    hosts = _known_hosts(tmp_path, settings, other.with_suffix(".pub"))
    with pytest.raises(HostKeyMismatch, match="CHANGED"):
        _target(settings, hosts).connect()


def test_a_known_key_type_the_server_lacks_is_refused_without_saying_changed(settings, sshd, tmp_path):
    ecdsa = tmp_path / "ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(ecdsa)], check=True)
    hosts = _known_hosts(tmp_path, settings, ecdsa.with_suffix(".pub"))
    with pytest.raises(HostKeyMismatch) as e:
        _target(settings, hosts).connect()
    assert "CHANGED" not in str(e.value) and "no host key of a type" in str(e.value)


@pytest.fixture
def agent_with_encrypted_key(sshd, tmp_path, monkeypatch):
    """An encrypted client key, authorized on the platform's sshd, loaded into an ssh-agent of this test."""
    import os
    import time

    key, passphrase = tmp_path / "enc_key", "correct horse"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)], check=True)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    authorized = sshd / "authorized_keys"
    original = authorized.read_text()
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and agent.poll() is None, "ssh-agent did not start"
            time.sleep(0.05)
        askpass = tmp_path / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
        askpass.chmod(0o700)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock), SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                   DISPLAY=":0")
        subprocess.run(["ssh-add", str(key)], env=env, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        authorized.write_text(original + key.with_suffix(".pub").read_text())
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.delenv("BACKUP_SFTP_KEY_PASSPHRASE", raising=False)
        yield key
    finally:
        authorized.write_text(original)
        agent.terminate()
        agent.wait(timeout=10)


def test_openssh_engine_uploads_with_an_encrypted_key_held_by_the_agent(settings, sshd, agent_with_encrypted_key,
                                                                         tmp_path):
    from config.settings import load_settings
    from connectors.sftp import SftpTarget, upload
    from tests.conftest import write_config

    key = agent_with_encrypted_key
    s = load_settings(write_config(tmp_path / "agent.yaml", {"sftp": {"key_file": str(key), "engine": "openssh"}}))
    local = tmp_path / "b.bin"
    local.write_bytes(b"y" * 2048)
    remote = str(tmp_path / "remote-agent.bin")
    upload(SftpTarget.from_settings(s), local, remote)
    assert Path(remote).read_bytes() == local.read_bytes()
