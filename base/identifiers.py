"""SQL identifiers, validated before any query is built."""

from __future__ import annotations

import re
from dataclasses import dataclass

from base.errors import InvalidInput

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: the one rule for job ids (Celery task ids chosen by callers): 32 hex digits or a canonical UUID, lower case
_JOB_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_identifier(name) -> bool:
    """Whether ``name`` is a plain SQL identifier (letters, digits and _, not starting with a digit)."""
    # fullmatch, not match with ``$``: ``$`` also matches before a trailing newline ("db.t\n" reached SQL).
    return isinstance(name, str) and _IDENT.fullmatch(name) is not None


def identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise InvalidInput."""
    if not is_identifier(name):
        raise InvalidInput(f"invalid {what} {str(name)[:200]!r}: use letters, digits and _, not starting with a digit")
    return name


def check_job_id(job_id) -> str:
    """The job id if it is 32 lower-case hex digits or a canonical UUID; InvalidInput otherwise.

    Checked once, at the public entry task, before anything is built from it: job ids name Redis keys,
    local folders and remote files (via ``base.text.run_id``), so a caller-chosen ``/../x`` must never get further.
    """
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidInput(f"invalid job id {str(job_id)[:80]!r}: use 32 hex digits or a UUID "
                           f"(the Celery task id; e.g. uuid.uuid4().hex)")
    return job_id


@dataclass(frozen=True)
class TableName:
    """A validated ``db.table`` name."""

    db: str
    table: str

    @classmethod
    def parse(cls, text: str) -> "TableName":
        """Parse ``db.table``; anything else raises InvalidInput."""
        if not isinstance(text, str):
            raise InvalidInput(f"invalid table name {text!r}: expected a string 'db.table'")
        parts = text.split(".")
        if len(parts) != 2:
            raise InvalidInput(f"invalid table name {text[:200]!r}: expected exactly 'db.table'")
        return cls(identifier(parts[0], "database name"), identifier(parts[1], "table name"))

    @property
    def sql(self) -> str:
        """Backquoted form for SQL text."""
        return f"`{self.db}`.`{self.table}`"

    def __str__(self) -> str:
        return f"{self.db}.{self.table}"
