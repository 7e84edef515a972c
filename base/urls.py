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
    if "@" not in text:  # no user part anywhere: the usual manifest cell, 600,000 of them in a 50,000-file run
        return text
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


_SENTINEL_MASTER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::([0-9]{1,5}))?")
SENTINEL_DEFAULT_PORT = 26379


class SentinelUrl:
    """``sentinel://host:port[,host:port...]/<db>?master=<name>``: the sentinels to ask, the database, the master's name."""

    __slots__ = ("sentinels", "db", "master")

    def __init__(self, sentinels: tuple[tuple[str, int], ...], db: int, master: str):
        self.sentinels, self.db, self.master = sentinels, db, master

    @classmethod
    def parse(cls, url: str) -> "SentinelUrl":
        """Parse and check ``url``; ValueError with a one-line reason (no credentials: they come from the environment)."""
        from urllib.parse import parse_qs

        if url_scheme(url, default=None) != "sentinel":
            raise ValueError("must start with sentinel://")
        rest = url.split("://", 1)[1]
        if "#" in rest:
            raise ValueError("has a #fragment")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        if "@" in netloc:
            raise ValueError("carries credentials (user@ or a password): BACKUP_REDIS_PASSWORD is the Redis password")
        sentinels = []
        for part in netloc.split(","):
            m = _HOST_PORT.fullmatch(part)
            if not m:
                raise ValueError(f"sentinel address {part!r} is not host:port")
            port = int(m.group(2) or SENTINEL_DEFAULT_PORT)
            if not 0 < port < 65536:
                raise ValueError(f"sentinel address {part!r} has a bad port")
            sentinels.append((m.group(1).strip("[]"), port))
        if len(set(sentinels)) != len(sentinels):
            raise ValueError("names a sentinel twice")
        if not re.fullmatch(r"[0-9]{0,2}", path) or (path and int(path) > 15):
            raise ValueError(f"database {path!r} must be a number from 0 to 15 (sentinel://h:p,h:p/<db>?master=<name>)")
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise ValueError("has a malformed ?query (only master=<name>)") from None
        if set(params) - {"master"}:
            raise ValueError(f"has unknown query parameter(s) {', '.join(sorted(set(params) - {'master'}))} "
                             f"(only master=<name>)")
        masters = params.get("master", [])
        if len(masters) != 1 or not _SENTINEL_MASTER.fullmatch(masters[0]):
            raise ValueError("needs one ?master=<name> (letters, digits, _ . -): the name the sentinels monitor")
        return cls(tuple(sentinels), int(path or 0), masters[0])

    def url_for(self, host: str, port: int, scheme: str = "sentinel", password: str | None = None) -> str:
        """One sentinel as ``scheme://[:password@]host:port/db`` (the form Celery and kombu read, one per sentinel)."""
        from urllib.parse import quote

        auth = f":{quote(password, safe='')}@" if password else ""
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{auth}{shown}:{port}/{self.db}"
