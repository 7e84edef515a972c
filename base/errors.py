"""Every error the backup workflows raise, in two families.

Retry policy reads the family, never the message:

    BackupError
     ├── RetryableError          transient: the same call may succeed later
     │    ├── ConnectionFailed   refused/reset/timeout talking to a service
     │    ├── ChecksumMismatch   a copy did not verify; copying again may fix it
     │    ├── SourceChanged      input files changed while being read; reading again may fix it
     │    ├── LockRenewalFailed  Redis hiccup while renewing a held lock
     │    └── DriverFailed       a spark-submit driver did not start, lost its JVM or ended without reporting
     └── FatalError             permanent: retrying cannot help, alert now
          ├── InvalidInput       bad table name, window, argument or path
          │    └── SchemaDrift    the input files no longer match the table's schema
          ├── ConfigError        configuration does not validate
          ├── NotFound           unknown table, missing source
          ├── AuthFailed         authentication refused
          ├── HostKeyMismatch    unknown or changed SSH host key
          ├── LockLost           another run holds the lock now (fencing)
          ├── AlreadyExists      a different file already sits at the target
          ├── TooManyDeliveries  a phase was redelivered past its limit
          ├── Stalled            a job stopped moving (no live holder, no message, or silent too long)
          └── RejectsExceeded    rejected rows above the configured ratio

Wrap a client's exception with ``raise X(...) from e`` so the cause is kept;
``classify`` maps the exceptions of the wrapped clients to a family in one
place.
"""

from __future__ import annotations

import errno
import re
import socket

from base.urls import redact_url_secrets


class BackupError(Exception):
    """Base of every error raised by this project."""

    retryable = False

    def one_line(self) -> str:
        """The error as one line for the CLI, logs and job records (URL passwords redacted)."""
        text = redact_url_secrets(" ".join(str(self).split()))
        return f"{type(self).__name__}: {text}"


class RetryableError(BackupError):
    """A transient failure: the phase is retried with backoff."""

    retryable = True


class FatalError(BackupError):
    """A permanent failure: no retry, the job fails and alerts."""


class ConnectionFailed(RetryableError):
    """A service could not be reached or dropped the connection."""


class ChecksumMismatch(RetryableError):
    """A copy's checksum differs from the source's."""


class SourceChanged(RetryableError):
    """Two reads of the same input files disagree: they were being written meanwhile."""


class LockRenewalFailed(RetryableError):
    """Renewing a held lock failed for a transient reason."""


class DriverFailed(RetryableError):
    """A spark-submit driver could not start a session, lost its JVM, or ended without reporting (killed)."""


class InvalidInput(FatalError):
    """A task argument, name or path is not acceptable."""


class SchemaDrift(InvalidInput):
    """The input files no longer match the live table's schema (found before anything is written)."""


class ConfigError(FatalError):
    """The configuration does not validate."""


class NotFound(FatalError):
    """A table, file or folder does not exist."""


class AuthFailed(FatalError):
    """A service refused our credentials."""


class HostKeyMismatch(FatalError):
    """The SSH server's host key is unknown or has changed."""


class LockLost(FatalError):
    """This run no longer holds its lock; it must not commit anything."""


class AlreadyExists(FatalError):
    """A different object already exists where we would write."""


class TooManyDeliveries(FatalError):
    """A phase was delivered more often than allowed (worker kept dying)."""


class Stalled(FatalError):
    """A job stopped moving: nothing holds or carries it any more, or its phase is silent past every time limit."""


class BackupDamaged(FatalError):
    """A stored backup no longer matches what the run that made it recorded (its SHA-256, its rows):
    retrying cannot mend it, so it fails (and alerts) at once."""


class RejectsExceeded(FatalError):
    """More rows were rejected than the configured ratio allows."""


_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EAGAIN,
}


#: Java exceptions a Hadoop client inside a server (HiveServer2, Spark) raises while the cluster is briefly unavailable:
#: a block whose only live replica was on a DataNode that is down, the NameNode (or a DataNode) refusing connections,
#: restarting, in safe mode or standing by.  Seen in the text of a server's error, its "Caused by" lines included.
_SERVER_SIDE_TRANSIENT = re.compile(r"BlockMissingException|Could not obtain block|java\.net\.ConnectException|"
                                    r"SafeModeException|RetriableException|StandbyException|"
                                    r"java\.net\.SocketTimeoutException|java\.net\.NoRouteToHostException")
_STACK_FRAME = re.compile(r"^\s*(at \S+\(.*\)|\.\.\. \d+ more)\s*$")


def without_stack_frames(text: str) -> str:
    """A server error's text without its Java stack frames (``at pkg.Class.method(File.java:1)``, ``... 3 more``):
    the messages and their "Caused by" lines.  Markers are looked for there, never in frames: a frame such as
    ``org.apache.hadoop.security.authentication.util.SubjectUtil.doAs`` is in nearly every Hadoop stack trace and
    says nothing about what failed."""
    return "\n".join(line for line in text.splitlines() if not _STACK_FRAME.match(line))


def server_side_transient(text: str) -> bool:
    """Whether a server's error (HiveServer2, Spark) was caused by its Hadoop cluster being briefly unavailable, so
    that the same statement may succeed later (``ConnectionFailed``): see ``_SERVER_SIDE_TRANSIENT``."""
    return bool(_SERVER_SIDE_TRANSIENT.search(without_stack_frames(text)))


def causes(exc: BaseException):
    """The exception and its explicit causes (``raise ... from``), outermost first; stops on a loop."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__


def classify(exc: BaseException, what: str) -> BackupError:
    """Map a client exception to one of our families, naming ``what`` failed.

    Already-classified errors pass through unchanged.  Anything unknown is
    fatal: an unexpected error retried blindly is how runs get done twice.
    """
    if isinstance(exc, BackupError):
        return exc
    detail = redact_url_secrets(" ".join(str(exc).split())) or type(exc).__name__
    if isinstance(exc, (socket.timeout, TimeoutError, ConnectionError, EOFError)):
        return ConnectionFailed(f"{what}: {detail}")
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return ConnectionFailed(f"{what}: {detail}")
    return FatalError(f"{what}: {type(exc).__name__}: {detail}")
