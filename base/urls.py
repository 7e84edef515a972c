"""The scheme of a location URL, read one way everywhere."""

from __future__ import annotations

import re

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(url: str, default: str | None = "file") -> str | None:
    """The lower-cased scheme of ``scheme://…``; ``default`` for a plain path (or the short ``file:/path``)."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else default
