"""SFTP to the backup server / edge node through paramiko: connect, verify, upload, checksum, rename.

The host key is always verified against the configured known_hosts file:
an unknown or changed key is a fatal error raised before any byte is sent.
"""

from __future__ import annotations

import getpass
import hashlib
import posixpath
import shlex
import socket
import shutil
import stat as stat_mod
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from base.fanout import run_threads
from base.errors import (AlreadyExists, BackupError, AuthFailed, ChecksumMismatch, ConfigError, ConnectionFailed,
                           FatalError, HostKeyMismatch, InvalidInput, NotFound, classify)
from base.text import CONTROL_CHARS
from config.settings import Settings, SftpSettings

# AES-GCM first: an AEAD cipher needs no separate MAC pass, the cheapest choice for paramiko.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
WINDOW_SIZE = 2 ** 31 - 1     # never stall on SSH flow control over a fast link
MAX_PACKET = 2 ** 18          # fewer, larger channel packets
CHUNK = 32768                 # SFTP write request size OpenSSH accepts without splitting


# Host key algorithms that sign with an "ssh-rsa" key (the known_hosts type of an RSA key).
_RSA_ALGORITHMS = {"ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"}


def _fingerprint(key: paramiko.PKey) -> str:
    import base64

    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class SftpTarget:
    """Connections to one SSH server, built from settings; every failure mapped to our errors."""

    def __init__(self, settings: SftpSettings, key_file: Path, known_hosts: Path, passphrase: str | None = None):
        self.s = settings
        self.user = settings.user or getpass.getuser()
        self.key_file = key_file
        self.known_hosts = known_hosts
        self._passphrase = passphrase
        if not known_hosts.is_file():
            raise ConfigError(f"sftp.known_hosts: file not found: {known_hosts}")
        if not key_file.is_file():
            raise ConfigError(f"sftp.key_file: file not found: {key_file}")
        self._pkey: paramiko.PKey | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> "SftpTarget":
        """Build from the full settings, passphrase from the environment."""
        pp = s.secret("BACKUP_SFTP_KEY_PASSPHRASE")
        return cls(s.sftp, s.path(s.sftp.key_file), s.path(s.sftp.known_hosts), pp.get_secret_value() if pp else None)

    @classmethod
    def for_address(cls, host: str, port: int, user: str | None, key_file: Path, known_hosts: Path,
                    passphrase: str | None = None, connect_timeout: int = 15) -> "SftpTarget":
        """Connections to ``user@host:port`` with the given key and known_hosts (``sftp://`` storage URLs)."""
        try:
            settings = SftpSettings(host=host, port=port, user=user, key_file=key_file,
                                    known_hosts=known_hosts, connect_timeout=connect_timeout)
        except ValueError as e:  # pydantic's ValidationError
            raise ConfigError(f"sftp://{host}:{port}: {' '.join(str(e).split())}") from e
        return cls(settings, key_file, known_hosts, passphrase)

    @property
    def host_label(self) -> str:
        return self.s.host if self.s.port == 22 else f"[{self.s.host}]:{self.s.port}"

    def uri(self, path: str) -> str:
        """sftp:// URI of a remote path (for job records)."""
        return f"sftp://{self.user}@{self.s.host}:{self.s.port}{path}"

    def _key(self) -> paramiko.PKey:
        if self._pkey is None:
            try:
                self._pkey = paramiko.PKey.from_path(str(self.key_file), self._passphrase)
            except (paramiko.SSHException, OSError, ValueError) as e:
                raise ConfigError(f"sftp.key_file: cannot load private key {self.key_file}: {e}") from e
        return self._pkey

    def _known_entry(self):
        """The known_hosts entry of this host (key type -> key), or None."""
        try:
            return paramiko.HostKeys(str(self.known_hosts)).lookup(self.host_label)
        except (OSError, paramiko.SSHException) as e:
            raise ConfigError(f"sftp.known_hosts: cannot read {self.known_hosts}: {e}") from e

    def _prefer_known_key_types(self, transport: paramiko.Transport) -> None:
        """Offer the server only the host key algorithms known_hosts holds a key of (as OpenSSH does), so
        a host recorded with, say, only its RSA key is verified with that key instead of being refused as
        CHANGED because the server would have preferred ed25519."""
        entry = self._known_entry()
        if not entry:
            return
        sec = transport.get_security_options()
        known_types = set(entry.keys())
        allowed = tuple(t for t in sec.key_types
                        if t in known_types or (t in _RSA_ALGORITHMS and "ssh-rsa" in known_types)
                        or t.replace("-cert-v01@openssh.com", "") in known_types)
        if allowed:
            sec.key_types = allowed

    def _verify_host_key(self, transport: paramiko.Transport) -> None:
        key = transport.get_remote_server_key()
        entry = self._known_entry()
        if entry is None:
            raise HostKeyMismatch(f"unknown host key for {self.host_label} ({key.get_name()} {_fingerprint(key)}): "
                                  f"not in {self.known_hosts}; refusing to connect")
        expected = entry.get(key.get_name())
        if expected is None:
            raise HostKeyMismatch(f"host key type {key.get_name()} of {self.host_label} is not in {self.known_hosts}, "
                                  f"which holds only {', '.join(sorted(entry.keys()))} for it ({_fingerprint(key)} "
                                  f"offered); add the host's key of a type both sides support; refusing to connect")
        if expected != key:
            raise HostKeyMismatch(f"host key for {self.host_label} has CHANGED (server offers {key.get_name()} "
                                  f"{_fingerprint(key)}, {self.known_hosts} says otherwise); refusing to connect")

    def connect(self) -> "SftpSession":
        """Open one verified, authenticated connection."""
        what = f"ssh {self.user}@{self.host_label}"
        try:
            sock = socket.create_connection((self.s.host, self.s.port), timeout=self.s.connect_timeout)
        except OSError as e:
            raise ConnectionFailed(f"{what}: {e}") from e
        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET)
        try:
            sec = transport.get_security_options()
            sec.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in sec.ciphers) + \
                tuple(c for c in sec.ciphers if c not in PREFERRED_CIPHERS)
            self._prefer_known_key_types(transport)
            transport.start_client(timeout=self.s.connect_timeout)
            self._verify_host_key(transport)
            transport.auth_publickey(self.user, self._key())
            transport.set_keepalive(30)
            sftp = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
            sftp.get_channel().settimeout(max(60, self.s.connect_timeout))
        except Exception as e:
            transport.close()
            if isinstance(e, paramiko.AuthenticationException):
                raise AuthFailed(f"{what}: authentication refused ({e})") from e
            if isinstance(e, paramiko.SSHException) and "no acceptable host key" in str(e):
                raise HostKeyMismatch(f"{what}: the server offers no host key of a type {self.known_hosts} holds "
                                      f"for it; refusing to connect") from e
            if isinstance(e, paramiko.SSHException):
                raise ConnectionFailed(f"{what}: {e}") from e
            raise classify(e, what) from e
        return SftpSession(self, transport, sftp)


def _map(e: BaseException, what: str):
    if isinstance(e, FileNotFoundError) or (isinstance(e, IOError) and getattr(e, "errno", None) == 2):
        return NotFound(f"{what}: no such file")
    if isinstance(e, (paramiko.SSHException, socket.error, EOFError)):
        return ConnectionFailed(f"{what}: {e}")
    return classify(e, what)


class SftpSession:
    """One open SSH connection with its SFTP channel."""

    def __init__(self, target: SftpTarget, transport: paramiko.Transport, sftp: paramiko.SFTPClient):
        self.target = target
        self.transport = transport
        self.sftp = sftp

    def close(self) -> None:
        """Close the SFTP channel and the connection."""
        try:
            self.sftp.close()
        finally:
            self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stat(self, path: str) -> paramiko.SFTPAttributes | None:
        """Remote attributes, or None if the path does not exist."""
        return self._attributes(self.sftp.stat, "stat", path)

    def lstat(self, path: str) -> paramiko.SFTPAttributes | None:
        """Remote attributes of ``path`` itself (a symbolic link is not followed), or None if it does not exist."""
        return self._attributes(self.sftp.lstat, "lstat", path)

    @staticmethod
    def _attributes(call, what: str, path: str) -> paramiko.SFTPAttributes | None:
        try:
            return call(path)
        except IOError as e:
            if getattr(e, "errno", None) == 2:
                return None
            raise _map(e, f"{what} {path}") from e
        except Exception as e:
            raise _map(e, f"{what} {path}") from e

    def makedirs(self, path: str) -> None:
        """mkdir -p on the remote side."""
        parts = [p for p in path.split("/") if p]
        cur = "/"
        for p in parts:
            cur = posixpath.join(cur, p)
            st = self.stat(cur)
            if st is None:
                try:
                    self.sftp.mkdir(cur)
                except IOError as e:
                    if self.stat(cur) is None:  # lost a race with another creator otherwise
                        raise _map(e, f"mkdir {cur}") from e
            elif not stat_mod.S_ISDIR(st.st_mode):
                raise AlreadyExists(f"mkdir {cur}: exists and is not a folder")

    def listdir(self, path: str) -> list[str]:
        """Names in a remote folder."""
        try:
            return self.sftp.listdir(path)
        except Exception as e:
            raise _map(e, f"list {path}") from e

    def remove(self, path: str) -> None:
        """Delete a remote file; missing is fine."""
        try:
            self.sftp.remove(path)
        except IOError as e:
            if getattr(e, "errno", None) != 2:
                raise _map(e, f"remove {path}") from e

    def rmdir_if_empty(self, path: str) -> bool:
        """Remove an empty remote folder; True if it is gone, False if it still holds something (never recursive)."""
        try:
            self.sftp.rmdir(path)
            return True
        except IOError as e:
            if self.stat(path) is None:
                return True
            if self.listdir(path):
                return False
            raise _map(e, f"rmdir {path}") from e

    def rename_no_replace(self, src: str, dst: str) -> None:
        """Atomic rename that fails if ``dst`` exists (OpenSSH's SFTP rename links, never replaces)."""
        try:
            self.sftp.rename(src, dst)
        except IOError as e:
            if self.stat(dst) is not None:
                raise AlreadyExists(f"rename {src} -> {dst}: target exists") from e
            raise _map(e, f"rename {src} -> {dst}") from e

    def sha256(self, path: str) -> str:
        """SHA-256 computed on the server by ``sha256sum`` (the path is shell-quoted)."""
        what = f"remote sha256sum {path}"
        try:
            code, digests, err = remote_sha256sum(self.transport, [path], self.target.s.connect_timeout)
        except Exception as e:
            raise _map(e, what) from e
        if code != 0:
            raise FatalError(f"{what}: exit {code}: {' '.join(err.split())[:300]}")
        if len(digests) != 1:
            raise FatalError(f"{what}: unexpected output ({len(digests)} digests for one file)")
        return digests[0]


_HEX64 = frozenset("0123456789abcdef")


def remote_sha256sum(transport: paramiko.Transport, paths: list[str], timeout: float) -> tuple[int, list[str], str]:
    """One ``sha256sum`` over ``paths`` on the server: (exit code, the digests it printed in argument order, stderr).

    Costs one remote command (a channel and a process) for the whole list.
    Paths are shell-quoted.  The output is split on ``\\n`` only: sha256sum
    escapes a newline in a name (and marks that line with a leading
    backslash), while other line breaks (``\\r``, U+2028) pass through raw
    and must not split a line.  A line that does not start with 64 hex
    digits (after that backslash) is not a digest and is left out.
    """
    channel = transport.open_session(timeout=timeout)
    try:
        channel.exec_command("sha256sum -- " + " ".join(shlex.quote(p) for p in paths))
        out = channel.makefile("rb").read().decode(errors="replace")
        err = channel.makefile_stderr("rb").read().decode(errors="replace")
        code = channel.recv_exit_status()
    finally:
        channel.close()
    digests = []
    for line in out.split("\n"):
        digest = line.removeprefix("\\")[:64]
        if len(digest) == 64 and set(digest) <= _HEX64:
            digests.append(digest)
    return code, digests, err


ProgressFn = Callable[[int], None]


def upload(target: SftpTarget, local: Path, remote_tmp: str, progress: ProgressFn | None = None,
           streams: int | None = None, rate_limit_mbps: float | None = None) -> None:
    """Upload ``local`` to ``remote_tmp`` with the configured engine (paramiko or OpenSSH's scp -s)."""
    if target.s.engine == "openssh":
        _upload_openssh(target, local, remote_tmp, progress, rate_limit_mbps)
    else:
        _upload_paramiko(target, local, remote_tmp, progress, streams, rate_limit_mbps)


def _sftp_quote(path: str) -> str:
    """One double-quoted argument of an ``sftp -b`` batch line (backslash escapes); InvalidInput for a control
    character, which no quoting keeps inside the line (a newline would start a new batch command)."""
    if CONTROL_CHARS.search(path):
        raise InvalidInput(f"path {path[:200]!r} holds a control character; refused before it reaches an sftp batch")
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def openssh_upload_command(target: SftpTarget, local: Path, remote_tmp: str, rate: float) -> tuple[list[str], bytes]:
    """The argv and stdin of the OpenSSH upload: ``scp -s``, or ``sftp -b -`` under a bandwidth cap (``rate`` MB/s).

    ``--`` ends the options before the local path and ``user@host``, and ``-F /dev/null`` keeps every ssh
    config file out; the user name is checked at load (never starting with ``-``), yet ``--`` holds even
    if one slipped through.
    """
    s = target.s
    program = "sftp" if rate else "scp"
    exe = shutil.which(program)
    if not exe:
        raise ConfigError(f"sftp.engine is 'openssh' but the {program} program is not installed (openssh-client)")
    # No -q: it also silences ssh's diagnostics, and a refused host key would then read as a
    # bare "Connection closed" (retryable) instead of HostKeyMismatch (fatal).  Output is
    # captured, not a terminal, so there is no progress meter to silence.
    # -F /dev/null: no ~/.ssh/config or /etc/ssh/ssh_config (a ProxyCommand, another IdentityFile or a relaxed
    # host key check there must not apply); everything needed is given here.
    common = ["-F", "/dev/null", "-i", str(target.key_file), "-c", ",".join(PREFERRED_CIPHERS),
              "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
              "-o", f"UserKnownHostsFile={target.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
              "-o", f"ConnectTimeout={s.connect_timeout}", "-o", "ServerAliveInterval=30"]
    if rate:
        request = max(1024, min(131072, int(rate * 1e6 / 4)))
        argv = [exe, "-b", "-", "-P", str(s.port), "-R", "64", "-B", str(request), *common,
                "-l", str(max(1, int(rate * 8000))), "--", f"{target.user}@{s.host}"]  # -l in Kbit/s
        stdin = f"put {_sftp_quote(str(local))} {_sftp_quote(remote_tmp)}\n".encode()
    else:
        host = f"[{s.host}]" if ":" in s.host else s.host
        argv = [exe, "-s", "-P", str(s.port), *common, "--", str(local.resolve()),
                f"{target.user}@{host}:{remote_tmp}"]
        stdin = b""
    return argv, stdin


def _upload_openssh(target: SftpTarget, local: Path, remote_tmp: str, progress: ProgressFn | None,
                    rate_limit_mbps: float | None) -> None:
    """Send the bytes with OpenSSH's scp over the SFTP protocol (C speed), host key checked strictly against known_hosts.

    ``scp -s`` rather than ``sftp -b``: both speak SFTP with the same defaults, yet on the
    development machine (OpenSSH 9.2) ``sftp put`` reached only ~0.65x of ``scp -s`` whatever
    its -B/-R; see bench/transfer.py.  In SFTP mode scp takes the remote path verbatim (no
    remote shell, no globbing of the target); the local path is absolute, so a ':' in it can
    never be read as a host.  Under a bandwidth cap ``sftp -b`` is used instead: scp 9.2 does
    not apply ``-l`` in SFTP mode, and sftp's smaller requests (``-B``) keep the pacing smooth.
    """
    s = target.s
    rate = s.rate_limit_mbps if rate_limit_mbps is None else rate_limit_mbps
    argv, stdin = openssh_upload_command(target, local, remote_tmp, rate)
    program = Path(argv[0]).name
    size = local.stat().st_size
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_remote_size, args=(target, remote_tmp, size, progress, stop), daemon=True)
    if progress:
        watcher.start()
    try:
        returncode, stderr = _run_watched(argv, stdin, s.stall_timeout, f"{program} upload to {target.host_label}")
    finally:
        stop.set()
        if progress:
            watcher.join(timeout=5)  # its remote stat may hang in the same black hole; progress is best effort
    if returncode != 0:
        err = " ".join(stderr.decode(errors="replace").split())[:300]
        if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
            raise HostKeyMismatch(f"{program} to {target.host_label}: {err}")
        if "Permission denied" in err:
            raise AuthFailed(f"{program} to {target.host_label}: {err}")
        raise ConnectionFailed(f"{program} upload to {target.host_label} exited {returncode}: {err}")


def _bytes_read(pid: int) -> int | None:
    """Bytes process ``pid`` has read so far (Linux ``/proc/<pid>/io`` rchar), or None where unavailable."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _run_watched(argv: list[str], stdin: bytes, stall_timeout: float, what: str) -> tuple[int, bytes]:
    """Run an upload program; kill it when it has read nothing new for ``stall_timeout`` seconds.

    An upload reads the archive as the network takes its bytes, so in a black
    hole (packets dropped, no reset) its reads stop once the socket buffers are
    full, and at the end it waits only for the server's last replies.  Reading
    the counter is local and costs one small /proc read a second.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    try:
        proc.stdin.write(stdin)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    last, changed = None, time.monotonic()
    while True:
        try:
            proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            pass
        seen = _bytes_read(proc.pid)
        if seen != last:
            last, changed = seen, time.monotonic()
        elif seen is not None and time.monotonic() - changed > stall_timeout:
            proc.kill()
            proc.wait()
            reader.join(timeout=5)
            raise ConnectionFailed(f"{what}: no progress for {stall_timeout:.0f}s (sftp.stall_timeout); "
                                   f"upload killed (a black-holed link or a hung server)")
    reader.join(timeout=5)
    return proc.returncode, b"".join(errors)


def _watch_remote_size(target: SftpTarget, remote: str, size: int, progress: ProgressFn, stop: threading.Event):
    """Report progress of an external upload by watching the remote file grow."""
    reported = 0
    try:
        with target.connect() as sess:
            while not stop.wait(1.0):
                st = sess.stat(remote)
                if st is not None and st.st_size > reported:
                    progress(st.st_size - reported)
                    reported = st.st_size
    except BackupError:
        pass  # progress only; the upload itself reports real failures
    if reported < size and stop.is_set():
        progress(size - reported)


def _upload_paramiko(target: SftpTarget, local: Path, remote_tmp: str, progress: ProgressFn | None,
                     streams: int | None, rate_limit_mbps: float | None) -> None:
    """Upload over ``streams`` parallel paramiko connections, each writing one byte range."""
    size = local.stat().st_size
    streams = max(1, min(streams or target.s.streams, max(1, size // (8 * 2**20))))
    rate = (target.s.rate_limit_mbps if rate_limit_mbps is None else rate_limit_mbps) * 1e6 / streams
    with target.connect() as first:
        try:
            with first.sftp.open(remote_tmp, "wb") as f:
                f.truncate(size)
        except Exception as e:
            raise _map(e, f"create {remote_tmp}") from e
        if streams == 1:
            _send_range(first, local, remote_tmp, 0, size, progress, rate)
            return
        bounds = [size * i // streams for i in range(streams + 1)]

        def run(i: int) -> None:
            if i == 0:
                _send_range(first, local, remote_tmp, bounds[0], bounds[1], progress, rate)
            else:
                with target.connect() as sess:
                    _send_range(sess, local, remote_tmp, bounds[i], bounds[i + 1], progress, rate)

        run_threads([lambda i=i: run(i) for i in range(streams)], "upload")


def _send_range(sess: SftpSession, local: Path, remote: str, start: int, end: int,
                progress: ProgressFn | None, rate: float) -> None:
    what = f"upload {local.name} -> {remote} [{start}:{end}]"
    began = time.monotonic()
    sent = 0
    try:
        with open(local, "rb") as src, sess.sftp.open(remote, "r+b") as dst:
            # Pipelining lets paramiko send write requests without waiting for each ack.
            dst.set_pipelined(True)
            src.seek(start)
            dst.seek(start)
            left = end - start
            # Small reads under a bandwidth cap keep the pacing smooth; large ones otherwise.
            step = max(4096, int(rate / 4)) if rate else 1024 * 1024
            while left > 0:
                buf = src.read(min(left, step, 1024 * 1024))
                if not buf:
                    raise FatalError(f"{what}: local file shrank while uploading")
                dst.write(buf)
                left -= len(buf)
                sent += len(buf)
                if progress:
                    progress(len(buf))
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
    except FatalError:
        raise
    except Exception as e:
        raise _map(e, what) from e


def verify_and_commit(sess: SftpSession, remote_tmp: str, remote_final: str, sha256: str,
                      before_commit: Callable[[], None]) -> str:
    """Check the temp file's remote SHA-256, then rename it into place; idempotent on retry.

    ``before_commit`` is the fencing check: it raises if this run lost its lock.
    Returns 'committed' or 'already present'.
    """
    final = sess.stat(remote_final)
    if final is not None:
        if sess.sha256(remote_final) == sha256:
            sess.remove(remote_tmp)
            return "already present"
        raise AlreadyExists(f"{remote_final} exists with different content; refusing to overwrite a backup")
    got = sess.sha256(remote_tmp)
    if got != sha256:
        sess.remove(remote_tmp)
        raise ChecksumMismatch(f"{remote_tmp}: remote sha256 {got[:12]}… != local {sha256[:12]}…")
    before_commit()
    sess.rename_no_replace(remote_tmp, remote_final)
    return "committed"


def local_sha256(path: Path) -> str:
    """SHA-256 of a local file, streaming."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()

