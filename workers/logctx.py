"""Log lines carry the job id and phase; text or JSON format (for log shippers).  URL passwords are redacted
from every line (``base.urls.redact_url_secrets``), whatever a client library put in its message."""

from __future__ import annotations

import contextvars
import json
import logging

from base.urls import redact_url_secrets

_job = contextvars.ContextVar("job_id", default="-")
_phase = contextvars.ContextVar("phase", default="-")


def bind(job_id: str | None, phase: str | None) -> None:
    """Set the job id and phase for log lines of the current task."""
    _job.set(job_id or "-")
    _phase.set(phase or "-")


def current() -> tuple[str, str]:
    """(job_id, phase) of the current task, '-' outside one."""
    return _job.get(), _phase.get()


class ContextFilter(logging.Filter):
    """Adds ``job_id`` and ``phase`` attributes to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id, record.phase = current()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "job_id": getattr(record, "job_id", "-"), "phase": getattr(record, "phase", "-"),
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact_url_secrets(json.dumps(out))


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines, URL passwords redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url_secrets(super().format(record))


TEXT_FORMAT = "%(asctime)s %(levelname)s [job=%(job_id)s phase=%(phase)s] %(name)s: %(message)s"


def configure(logger: logging.Logger, fmt: str) -> None:
    """Install the filter and formatter on every handler of ``logger``."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)
    for h in logger.handlers:
        h.addFilter(ContextFilter())
        h.setFormatter(formatter)
