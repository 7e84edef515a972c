"""SFTP to the backup server / edge node through paramiko: connect, verify, upload, checksum, rename.

The host key is always verified against the configured known_hosts file:
an unknown or changed key is a fatal error raised before any byte is sent.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import posixpath
import shlex
import socket
import shutil
import stat as stat_mod
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from base.fanout import run_threads
from base.errors import (AlreadyExists, AuthFailed, BackupError, ChecksumMismatch, ConfigError, ConnectionFailed,
                           FatalError, HostKeyMismatch, InvalidInput, NotFound, classify)
from base.text import CONTROL_CHARS
from config.settings import Settings, SftpSettings

# AES-GCM first: an AEAD cipher needs no separate MAC pass, the cheapest choice for paramiko.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
WINDOW_SIZE = 2 ** 31 - 1     # never stall on SSH flow control over a fast link
MAX_PACKET = 2 ** 18          # fewer, larger channel packets
CHUNK = 32768                 # SFTP write request size OpenSSH accepts without splitting

log = logging.getLogger(__name__)


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
        #: the shared bandwidth budget of this host (``backup.bandwidth``), set by ``Resources.sftp``
        self.pace: Callable[[int], None] | None = None
        #: whether the server runs python3 (the in-stream receiver), once asked
        self.has_python3: bool | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> "SftpTarget":
        """Build from the full settings, passphrase from the environment."""
        pp = s.secret("BACKUP_SFTP_KEY_PASSPHRASE")
        return cls(s.sftp, s.path(s.sftp.key_file), s.path(s.sftp.known_hosts), pp.get_secret_value() if pp else None)

    @classmethod
    def for_address(cls, host: str, port: int, user: str | None, key_file: Path, known_hosts: Path,
                    passphrase: str | None = None, connect_timeout: int = 15,
                    stall_timeout: int = 60) -> "SftpTarget":
        """Connections to ``user@host:port`` with the given key and known_hosts (``sftp://`` storage URLs)."""
        try:
            settings = SftpSettings(host=host, port=port, user=user, key_file=key_file, known_hosts=known_hosts,
                                    connect_timeout=connect_timeout, stall_timeout=stall_timeout)
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
            transport.auth_timeout = self.s.connect_timeout  # paramiko's default waits 30 s on a silent server
            self._verify_host_key(transport)
            transport.auth_publickey(self.user, self._key())
            transport.set_keepalive(30)
            sftp = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
            # A request or write on the SFTP channel that sees no answer for stall_timeout (a black-holed link, a
            # hung server) fails as retryable, as a stalled upload program is killed after it.
            sftp.get_channel().settimeout(max(self.s.stall_timeout, self.s.connect_timeout))
        except Exception as e:
            refused = isinstance(e, paramiko.AuthenticationException) and _server_refused(transport)
            transport.close()
            if refused:
                raise AuthFailed(f"{what}: authentication refused ({e})") from e
            if isinstance(e, paramiko.AuthenticationException):  # no answer: the link stalled or dropped
                raise ConnectionFailed(f"{what}: no answer to authentication, the connection stalled or was "
                                       f"lost ({e})") from e
            if isinstance(e, paramiko.SSHException) and "no acceptable host key" in str(e):
                raise HostKeyMismatch(f"{what}: the server offers no host key of a type {self.known_hosts} holds "
                                      f"for it; refusing to connect") from e
            if isinstance(e, paramiko.SSHException):
                raise ConnectionFailed(f"{what}: {e}") from e
            raise classify(e, what) from e
        return SftpSession(self, transport, sftp)


def _server_refused(transport: paramiko.Transport) -> bool:
    """Whether the server answered our authentication request (and refused it), read before the transport is
    closed.  paramiko raises the same AuthenticationException when no answer came ("Authentication timeout.":
    a black-holed link) or the connection dropped meanwhile ("transport shut down or saw EOF"): those are
    connection failures, retried, not a refusal of our key, which alerts at once."""
    event = getattr(transport.auth_handler, "auth_event", None)
    return transport.is_active() and event is not None and event.is_set()


def _map(e: BaseException, what: str):
    if isinstance(e, FileNotFoundError) or (isinstance(e, IOError) and getattr(e, "errno", None) == 2):
        return NotFound(f"{what}: no such file")
    if isinstance(e, (paramiko.SSHException, socket.error, EOFError)):
        return ConnectionFailed(f"{what}: {e}")
    if isinstance(e, paramiko.sftp.SFTPError):  # the SFTP stream out of step: the channel is lost, not the file
        return ConnectionFailed(f"{what}: SFTP protocol stream broken: {e}")
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

    def alive(self) -> bool:
        """Whether the connection is still up (a local check: no round trip)."""
        return self.transport.is_active() and not self.sftp.get_channel().closed

    def has_python3(self) -> bool:
        """Whether the server can run the in-stream receiver (asked once per target: one small remote command)."""
        known = self.target.has_python3
        if known is None:
            what = f"ssh {self.target.host_label}: command -v python3"
            try:
                channel = self.transport.open_session(timeout=self.target.s.connect_timeout)
                try:
                    channel.exec_command(f"command -v {RECEIVER_PYTHON} >/dev/null 2>&1")
                    known = channel.recv_exit_status() == 0
                finally:
                    channel.close()
            except Exception as e:
                raise _map(e, what) from e
            self.target.has_python3 = known
        return known

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
    if code == -1:  # paramiko's "no exit status": the connection ended while sha256sum ran (a server going away)
        raise EOFError(f"the connection ended before sha256sum's exit status ({err.strip()[:200] or 'no output'})")
    digests = []
    for line in out.split("\n"):
        digest = line.removeprefix("\\")[:64]
        if len(digest) == 64 and set(digest) <= _HEX64:
            digests.append(digest)
    return code, digests, err


ProgressFn = Callable[[int], None]
#: Takes ``n`` bytes of a bandwidth budget, sleeping until they may be sent (``backup.bandwidth``).
PaceFn = Callable[[int], None]

#: The program the server runs to receive an upload and hash it in the same pass (``python3 -c``):
#: it says ``ready`` once the temp file is open (a paced sender takes no budget before that: SSH
#: set-up is not bandwidth), then each buffer read from the SSH channel is hashed and written; at
#: EOF it prints the SHA-256 and the byte count of what it wrote.  ``O_NOFOLLOW`` refuses a symbolic link planted at the temp name; the
#: mode is the local archive's, as scp gives it.  Kept to the Python 3.0 subset: edge nodes run old ones.
REMOTE_RECEIVER = """\
import hashlib, os, sys
path, mode = sys.argv[1], int(sys.argv[2], 8)
exclusive = len(sys.argv) > 3 and sys.argv[3] == 'x'
h = hashlib.sha256()
n = 0
fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | getattr(os, 'O_NOFOLLOW', 0),
             mode)
sys.stdout.write('ready\\n')
sys.stdout.flush()
src = sys.stdin.buffer.raw
try:
    import fcntl
    fcntl.fcntl(0, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer wake-ups between sshd and this loop (Linux)
except Exception:
    pass
buf = bytearray(1 << 20)
view = memoryview(buf)
while True:
    k = src.readinto(buf)
    if not k:
        break
    h.update(view[:k])
    n += k
    left = view[:k]
    while len(left):
        left = left[os.write(fd, left):]
os.close(fd)
sys.stdout.write('%s %d\\n' % (h.hexdigest(), n))
"""
#: Exit status of the remote command when the server has no python3: the upload falls back to read-back.
NO_RECEIVER_EXIT = 98
#: The interpreter the receiver runs with on the server (looked up in the login shell's PATH).
RECEIVER_PYTHON = "python3"
#: Bytes per write to the upload program under a bandwidth budget (a smaller share is taken under low limits).
PACED_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Uploaded:
    """What an upload left at the temporary name, as the server saw it.

    ``remote_sha256``/``remote_bytes`` are the server's own SHA-256 and byte count of the bytes it wrote,
    computed in the same pass as the write (None when the upload cannot hash in-stream: then the
    temp file is read back on the server before the rename).  ``verified_by`` says which, for the job record.
    """

    remote_sha256: str | None = None
    remote_bytes: int | None = None
    verified_by: str = "read-back"


class LocalPace:
    """A bandwidth cap for one upload alone (``rate`` MB/s): the pacing used when no shared budget is given."""

    def __init__(self, rate_mbps: float) -> None:
        self.rate = rate_mbps * 1e6
        self.began = time.monotonic()
        self.sent = 0

    def __call__(self, n: int) -> None:
        ahead = self.sent / self.rate - (time.monotonic() - self.began)
        if ahead > 0:
            time.sleep(ahead)
        self.sent += n


def _pace_for(target: SftpTarget, rate_limit_mbps: float | None) -> PaceFn | None:
    """The pacing of one upload: an explicit ``rate_limit_mbps`` (this upload alone), else the target's shared
    budget (``target.pace``, set by ``Resources.sftp``), else the configured cap for this upload alone."""
    if rate_limit_mbps is not None:
        return LocalPace(rate_limit_mbps) if rate_limit_mbps else None
    if target.pace is not None:
        return target.pace
    return LocalPace(target.s.rate_limit_mbps) if target.s.rate_limit_mbps else None


def upload(target: SftpTarget, local: Path, remote_tmp: str, progress: ProgressFn | None = None,
           streams: int | None = None, rate_limit_mbps: float | None = None) -> Uploaded:
    """Upload ``local`` to ``remote_tmp`` with the configured engine; the server hashes the bytes as it writes them.

    ``sftp.verify: in-stream`` (default): the server receives the bytes through a small ``python3``
    program that hashes each buffer and writes it (the file is read once on each side: locally by the
    upload, remotely not at all).  A server without python3, ``sftp.verify: read-back`` and paramiko
    with several streams (byte ranges cannot feed one running hash) upload the plain way and return
    an ``Uploaded`` without a digest: ``verify_and_commit`` then reads the temp file back on the server.
    Pacing: ``rate_limit_mbps`` caps this upload alone; otherwise the target's shared budget applies.
    """
    pace = _pace_for(target, rate_limit_mbps)
    in_stream = target.s.verify == "in-stream"
    if target.s.engine == "openssh":
        if in_stream:
            got = _upload_openssh(target, local, remote_tmp, progress, pace, "in-stream")
            if got is not None:
                return got
            log.warning("%s has no python3: the upload is verified by reading it back (twice the server's reads); "
                        "set sftp.verify: read-back to skip this attempt", target.host_label)
        _upload_openssh(target, local, remote_tmp, progress, pace, "plain")
        return Uploaded(verified_by="read-back (no python3 on the server)" if in_stream else "read-back")
    streams = max(1, min(streams or target.s.streams, max(1, local.stat().st_size // (8 * 2**20))))
    if in_stream and streams == 1:
        got = _upload_paramiko_in_stream(target, local, remote_tmp, progress, pace)
        if got is not None:
            return got
        log.warning("%s has no python3: the upload is verified by reading it back", target.host_label)
        _upload_paramiko(target, local, remote_tmp, progress, streams, pace)
        return Uploaded(verified_by="read-back (no python3 on the server)")
    _upload_paramiko(target, local, remote_tmp, progress, streams, pace)
    return Uploaded(verified_by="read-back")


def _checked_remote_path(path: str) -> str:
    """``path`` if it holds no control character (InvalidInput otherwise): it goes into a remote command line."""
    if CONTROL_CHARS.search(path):
        raise InvalidInput(f"path {path[:200]!r} holds a control character; refused before it reaches the server")
    return path


def receiver_command(remote_tmp: str, mode: int, exclusive: bool = False) -> str:
    """The remote command line of an in-stream upload (run by the login shell; every argument quoted).
    ``exclusive``: the file must not exist yet (O_EXCL), as for a storage backend's new temp file."""
    _checked_remote_path(remote_tmp)
    return (f"command -v {RECEIVER_PYTHON} >/dev/null 2>&1 || exit {NO_RECEIVER_EXIT}; "
            f"exec {RECEIVER_PYTHON} -c {shlex.quote(REMOTE_RECEIVER)} {shlex.quote(remote_tmp)} {mode:o}"
            + (" x" if exclusive else ""))


def send_to_receiver(session: "SftpSession", remote_tmp: str, mode: int, chunks, pace: PaceFn | None,
                     progress: ProgressFn | None, what: str, exclusive: bool = False) -> Uploaded | None:
    """Run the receiver on one exec channel of ``session`` and send ``chunks`` to it; None without python3.

    Each chunk is taken from ``pace`` first (in pieces of ``paced_step``) and only once the receiver
    said it is ready.  Costs one channel and one python3 start on the server (~20 ms of its CPU):
    worth it for large files only, where it saves reading the file again.
    """
    if not session.has_python3():
        return None
    timeout = float(session.target.s.stall_timeout)
    step = paced_step(pace) if pace else 0
    try:
        channel = session.transport.open_session(timeout=session.target.s.connect_timeout)
        channel.settimeout(timeout)  # a black hole: no window, no answer, for this long
        try:
            channel.exec_command(receiver_command(remote_tmp, mode, exclusive))
            out = bytearray()
            while not out.endswith(b"\n"):  # "ready": the receiver has its temp file open
                chunk = channel.recv(64)
                if not chunk:
                    break
                out += chunk
            if out == b"ready\n":
                for chunk in chunks:
                    for piece in ((chunk[i:i + step] for i in range(0, len(chunk), step)) if step else (chunk,)):
                        if pace:
                            pace(len(piece))
                        channel.sendall(piece)
                        if progress:
                            progress(len(piece))
                channel.shutdown_write()
            while chunk := channel.recv(65536):
                out += chunk
            err = channel.makefile_stderr("rb").read().decode(errors="replace")
            code = channel.recv_exit_status()
        finally:
            channel.close()
    except socket.timeout as e:
        raise ConnectionFailed(f"{what}: no progress for {timeout:.0f}s (sftp.stall_timeout)") from e
    except BackupError:
        raise
    except Exception as e:
        raise _map(e, what) from e
    if code == NO_RECEIVER_EXIT and not out:
        session.target.has_python3 = False
        return None
    if code != 0:
        line = " ".join(err.split())[-300:]
        if "FileExistsError" in err:
            raise AlreadyExists(f"{what}: exists")
        if "Errno 28" in err or "No space left" in err:
            raise classify(OSError(28, "No space left on device"), what)
        raise FatalError(f"{what}: the server's receiver exited {code}: {line}")
    return _parse_receipt(bytes(out), what)


def _parse_receipt(out: bytes, what: str) -> Uploaded:
    """The receiver's answer: ``ready``, then ``<sha256> <bytes>``; FatalError on anything else."""
    lines = out.decode(errors="replace").split("\n")
    fields = lines[1].split() if len(lines) == 3 and lines[0] == "ready" and lines[2] == "" else []
    if len(fields) != 2 or len(fields[0]) != 64 or not set(fields[0]) <= _HEX64 or not fields[1].isdigit():
        raise FatalError(f"{what}: unexpected answer from the server's receiver: {out[:200]!r}")
    return Uploaded(remote_sha256=fields[0], remote_bytes=int(fields[1]), verified_by="in-stream")


def openssh_upload_command(target: SftpTarget, local: Path, remote_tmp: str, how: str) -> list[str]:
    """The argv of an OpenSSH upload.

    ``how``: ``in-stream`` (``ssh`` running the receiver, the bytes on stdin), ``plain`` (``scp -s``,
    C speed, the remote path verbatim) or ``paced-plain`` (``ssh`` running ``cat`` into the temp
    name, the bytes on stdin, fed at the budget's pace).  ``--`` ends the options before
    ``user@host``, and ``-F /dev/null`` keeps every ssh config file out; the user name is checked at
    load (never starting with ``-``), yet ``--`` holds even if one slipped through.
    """
    s = target.s
    program = "scp" if how == "plain" else "ssh"
    exe = shutil.which(program)
    if not exe:
        raise ConfigError(f"sftp.engine is 'openssh' but the {program} program is not installed (openssh-client)")
    _checked_remote_path(remote_tmp)
    # No -q: it also silences ssh's diagnostics, and a refused host key would then read as a
    # bare "Connection closed" (retryable) instead of HostKeyMismatch (fatal).  Output is
    # captured, not a terminal, so there is no progress meter to silence.
    # -F /dev/null: no ~/.ssh/config or /etc/ssh/ssh_config (a ProxyCommand, another IdentityFile or a relaxed
    # host key check there must not apply); everything needed is given here.
    common = ["-F", "/dev/null", "-i", str(target.key_file), "-c", ",".join(PREFERRED_CIPHERS),
              "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
              "-o", f"UserKnownHostsFile={target.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
              "-o", f"ConnectTimeout={s.connect_timeout}", "-o", "ServerAliveInterval=30"]
    if how == "plain":
        host = f"[{s.host}]" if ":" in s.host else s.host
        return [exe, "-s", "-P", str(s.port), *common, "--", str(local.resolve()), f"{target.user}@{host}:{remote_tmp}"]
    if how == "in-stream":
        command = receiver_command(remote_tmp, local.stat().st_mode & 0o777)
    else:
        command = f"echo ready && exec cat > {shlex.quote(remote_tmp)}"
    # -T: no terminal (a tty would mangle the bytes); -e none: no escape character in the stream.
    return [exe, "-T", "-e", "none", "-p", str(s.port), *common, "--", f"{target.user}@{s.host}", command]


def _upload_openssh(target: SftpTarget, local: Path, remote_tmp: str, progress: ProgressFn | None,
                    pace: PaceFn | None, how: str) -> Uploaded | None:
    """Send the bytes with OpenSSH (C speed), host key checked strictly against known_hosts.

    ``how="in-stream"``: ``ssh`` runs the receiver, which hashes what it writes; returns None when the
    server has no python3.  ``how="plain"``: ``scp -s`` (``scp -s`` rather than ``sftp -b``: on OpenSSH
    9.2 ``sftp put`` reached only ~0.65x of ``scp -s``, see bench/transfer.py), or, under a pace,
    ``ssh ... cat``.  Unpaced, the upload program reads the archive itself (no copy through Python);
    paced, a thread feeds it chunk by chunk as the budget allows.
    """
    s = target.s
    if how == "plain" and pace is not None:
        how = "paced-plain"
    argv = openssh_upload_command(target, local, remote_tmp, how)
    program = Path(argv[0]).name
    size = local.stat().st_size
    what = f"{program} upload to {target.host_label}"
    returncode, out, stderr = _run_watched(argv, local, pace, progress, size, s.stall_timeout, what)
    err = " ".join(stderr.decode(errors="replace").split())[:300]
    if how == "in-stream" and returncode == NO_RECEIVER_EXIT and not out:
        return None
    if returncode != 0:
        if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
            raise HostKeyMismatch(f"{program} to {target.host_label}: {err}")
        if "Permission denied" in err:
            raise AuthFailed(f"{program} to {target.host_label}: {err}")
        raise ConnectionFailed(f"{what} exited {returncode}: {err}")
    return _parse_receipt(out, what) if how == "in-stream" else Uploaded()


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


def _run_watched(argv: list[str], local: Path, pace: PaceFn | None, progress: ProgressFn | None, size: int,
                 stall_timeout: float, what: str) -> tuple[int, bytes, bytes]:
    """Run an upload program; kill it when it has read nothing new for ``stall_timeout`` seconds.

    Returns (exit status, stdout, stderr).  An upload reads the archive as the network takes its
    bytes, so in a black hole (packets dropped, no reset) its reads stop once the socket buffers
    are full, and at the end it waits only for the server's last replies.  Reading the counter is
    local and costs one small /proc read a second.  Progress is that counter too (bounded by the
    file size: the program also reads its key and known_hosts), or the bytes fed under a pace.
    ``scp`` is given the path and reads the file itself; ``ssh`` gets the file as its stdin, or,
    under a pace, a pipe a feeding thread writes at the budget's pace.
    """
    scp = Path(argv[0]).name == "scp"
    fed = {"n": 0}
    ready = threading.Event()
    with open(local, "rb") as archive:
        stdin = subprocess.DEVNULL if scp else (subprocess.PIPE if pace else archive)
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    streams: dict[str, bytes] = {}

    def read_out() -> None:
        first = proc.stdout.readline()  # "ready" from the remote side: the bytes may flow now
        ready.set()
        streams["out"] = first + proc.stdout.read()
    readers = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=lambda: streams.__setitem__("err", proc.stderr.read()), daemon=True)]
    if pace:
        readers.append(threading.Thread(target=_feed, args=(proc, local, pace, fed, ready), daemon=True))
    for t in readers:
        t.start()
    last, changed, reported = None, time.monotonic(), 0
    try:
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
                raise ConnectionFailed(f"{what}: no progress for {stall_timeout:.0f}s (sftp.stall_timeout); "
                                       f"upload killed (a black-holed link or a hung server)")
            if progress:
                now = min(size, fed["n"] if pace else (seen or 0))
                if now > reported:
                    progress(now - reported)  # may raise (the job lost its lock): the program is killed below
                    reported = now
    except BaseException:
        # Never leave the program writing the temp file behind a phase that has given up on it.
        proc.kill()
        proc.wait()
        for t in readers:
            t.join(timeout=5)
        raise
    for t in readers:
        t.join(timeout=5)
    if progress and proc.returncode == 0 and reported < size:
        progress(size - reported)
    return proc.returncode, streams.get("out", b""), streams.get("err", b"")


def _feed(proc: subprocess.Popen, local: Path, pace: PaceFn, fed: dict, ready: threading.Event) -> None:
    """Write ``local`` into the upload program's stdin, taking each chunk from the budget first.

    Nothing is taken before the remote side said it is ready (or ended): connecting is not bandwidth,
    and budget taken while the pipe cannot drain would be lost to every other upload too."""
    ready.wait()
    step = paced_step(pace)
    try:
        with open(local, "rb") as f:
            while chunk := f.read(PACED_CHUNK):
                for i in range(0, len(chunk), step):
                    piece = chunk[i:i + step]
                    pace(len(piece))
                    proc.stdin.write(piece)
                    fed["n"] += len(piece)
        proc.stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass  # the program died or was killed (stall): its exit status says why


def paced_step(pace: PaceFn) -> int:
    """Bytes per budget take: about a twentieth of a second at the limit, 4 KiB..256 KiB, so pacing stays smooth."""
    rate = getattr(pace, "rate", None)
    return PACED_CHUNK if not rate else max(4096, min(PACED_CHUNK, int(rate / 20)))


def _upload_paramiko_in_stream(target: SftpTarget, local: Path, remote_tmp: str, progress: ProgressFn | None,
                               pace: PaceFn | None) -> Uploaded | None:
    """One paramiko exec channel running the receiver; None when the server has no python3."""
    what = f"upload {local.name} -> {target.host_label}:{remote_tmp}"

    def chunks():
        with open(local, "rb") as src:
            while buf := src.read(1024 * 1024):
                yield buf
    with target.connect() as sess:
        return send_to_receiver(sess, remote_tmp, local.stat().st_mode & 0o777, chunks(), pace, progress, what)


def _upload_paramiko(target: SftpTarget, local: Path, remote_tmp: str, progress: ProgressFn | None,
                     streams: int, pace: PaceFn | None) -> None:
    """Upload over ``streams`` parallel paramiko connections, each writing one byte range."""
    size = local.stat().st_size
    with target.connect() as first:
        try:
            with first.sftp.open(remote_tmp, "wb") as f:
                f.truncate(size)
        except Exception as e:
            raise _map(e, f"create {remote_tmp}") from e
        if streams == 1:
            _send_range(first, local, remote_tmp, 0, size, progress, pace)
            return
        bounds = [size * i // streams for i in range(streams + 1)]
        shared = _locked(pace) if pace else None

        def run(i: int) -> None:
            if i == 0:
                _send_range(first, local, remote_tmp, bounds[0], bounds[1], progress, shared)
            else:
                with target.connect() as sess:
                    _send_range(sess, local, remote_tmp, bounds[i], bounds[i + 1], progress, shared)

        run_threads([lambda i=i: run(i) for i in range(streams)], "upload")


def _locked(pace: PaceFn) -> PaceFn:
    """``pace`` shared by the threads of one upload (a LocalPace counts bytes and is not thread-safe)."""
    lock = threading.Lock()

    def take(n: int) -> None:
        with lock:
            pace(n)
    take.rate = getattr(pace, "rate", None)  # type: ignore[attr-defined]
    return take


def _send_range(sess: SftpSession, local: Path, remote: str, start: int, end: int,
                progress: ProgressFn | None, pace: PaceFn | None) -> None:
    what = f"upload {local.name} -> {remote} [{start}:{end}]"
    try:
        with open(local, "rb") as src, sess.sftp.open(remote, "r+b") as dst:
            # Pipelining lets paramiko send write requests without waiting for each ack.
            dst.set_pipelined(True)
            src.seek(start)
            dst.seek(start)
            left = end - start
            # Small reads under a bandwidth cap keep the pacing smooth; large ones otherwise.
            step = paced_step(pace) if pace else 1024 * 1024
            while left > 0:
                buf = src.read(min(left, step))
                if not buf:
                    raise FatalError(f"{what}: local file shrank while uploading")
                if pace:
                    pace(len(buf))
                dst.write(buf)
                left -= len(buf)
                if progress:
                    progress(len(buf))
    except FatalError:
        raise
    except Exception as e:
        raise _map(e, what) from e


def verify_and_commit(sess: SftpSession, remote_tmp: str, remote_final: str, sha256: str,
                      before_commit: Callable[[], None], uploaded: Uploaded | None = None) -> str:
    """Check the temp file's SHA-256 as the server computed it, then rename it into place; idempotent on retry.

    The server's hash is the in-stream one of ``uploaded`` (the bytes the receiver wrote, checked
    here against the temp file's size too), or, without it, ``sha256sum`` of the temp file.
    ``before_commit`` is the fencing check: it raises if this run lost its lock.
    Returns 'committed' or 'already present'.
    """
    final = sess.stat(remote_final)
    if final is not None:
        if sess.sha256(remote_final) == sha256:
            sess.remove(remote_tmp)
            return "already present"
        raise AlreadyExists(f"{remote_final} exists with different content; refusing to overwrite a backup")
    if uploaded is not None and uploaded.remote_sha256:
        st = sess.stat(remote_tmp)
        got = uploaded.remote_sha256
        if st is None or st.st_size != uploaded.remote_bytes:
            sess.remove(remote_tmp)
            raise ChecksumMismatch(f"{remote_tmp}: the server wrote {uploaded.remote_bytes} bytes but the temp file "
                                   f"holds {None if st is None else st.st_size}; changed behind the upload")
    else:
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

