"""SQL identifiers, validated before any query is built."""

from __future__ import annotations

import re
from dataclasses import dataclass

from base.errors import InvalidInput

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise InvalidInput."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise InvalidInput(f"invalid {what} {name!r}: use letters, digits and _, not starting with a digit")
    return name


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
            raise InvalidInput(f"invalid table name {text!r}: expected exactly 'db.table'")
        return cls(identifier(parts[0], "database name"), identifier(parts[1], "table name"))

    @property
    def sql(self) -> str:
        """Backquoted form for SQL text."""
        return f"`{self.db}`.`{self.table}`"

    def __str__(self) -> str:
        return f"{self.db}.{self.table}"
