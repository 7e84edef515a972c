"""The scheme of a location URL, read one way everywhere."""

from __future__ import annotations

import re

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(url: str, default: str | None = "file") -> str | None:
    """The lower-cased scheme of ``scheme://…``; ``default`` for a plain path (or the short ``file:/path``)."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else default


# scheme://userinfo@ inside any text: a URL's user part, with or without a password.
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s/@:]*)(?::([^\s/@]*))?@")
# Schemes whose user part is a login name (kept when redacting); in others (http, redis) it is often a token.
_NAMED_USER_SCHEMES = {"sftp", "ssh", "hdfs", "webhdfs", "swebhdfs"}


def redact_url_secrets(text: str) -> str:
    """``text`` with every URL password replaced by ``***`` (``sftp://u:pw@h`` -> ``sftp://u:***@h``), and the
    whole user part of schemes where a lone user part is usually a token (``https://tok@h`` -> ``https://***@h``).

    Cheap (one regular expression); used on every error line, job record error and manifest cell.
    """
    def repl(m: re.Match) -> str:
        scheme, user, password = m.group(1), m.group(2), m.group(3)
        if password is not None:
            return f"{scheme}{user}:***@"
        if scheme[:-3].lower() in _NAMED_USER_SCHEMES:
            return m.group(0)
        return f"{scheme}***@"
    return _USERINFO.sub(repl, text)


def url_has_password(url: str) -> bool:
    """Whether ``url`` carries ``user:password@`` (any password, even empty)."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password is not None
    except ValueError:
        return ":" in url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[0]


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``; no name lookup."""
    import ipaddress

    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
