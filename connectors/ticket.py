"""Incident tickets as an HTTP POST of JSON to a webhook (replaces the legacy SDP ticket mail).

The bearer token (BACKUP_TICKET_TOKEN) is sent only over https, or plain http to a loopback host, and a
redirect is never followed: it would carry the token to wherever the answer points (urllib keeps the
Authorization header across hosts and schemes).  https certificates are verified (urllib's default context).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

from base.errors import AuthFailed, ConfigError, ConnectionFailed, FatalError
from config.settings import Settings


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answer a 3xx as the error it is here instead of following it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def open_ticket(s: Settings, payload: dict) -> str:
    """POST the payload; returns the receiver's answer body (its ticket id, if any)."""
    data = json.dumps(payload).encode()
    req = urllib.request.Request(s.ticket.url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    what = f"ticket webhook {s.ticket.url}"
    token = s.secret("BACKUP_TICKET_TOKEN")
    if token:
        if not s.ticket.token_allowed:  # also refused at load; the environment may have changed since
            raise ConfigError(f"{what}: BACKUP_TICKET_TOKEN is only sent over https (or http to loopback)")
        req.add_header("Authorization", f"Bearer {token.get_secret_value()}")
    try:
        with _OPENER.open(req, timeout=s.ticket.timeout) as resp:
            return resp.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:
            raise FatalError(f"{what}: HTTP {e.code} redirect to {e.headers.get('Location')!r} not followed "
                             f"(it would carry the token); configure the final URL") from e
        if e.code in (401, 403):
            raise AuthFailed(f"{what}: HTTP {e.code}") from e
        if e.code >= 500 or e.code == 429:
            raise ConnectionFailed(f"{what}: HTTP {e.code}") from e
        raise FatalError(f"{what}: HTTP {e.code}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionFailed(f"{what}: {e}") from e
    except http.client.HTTPException as e:  # a malformed answer (BadStatusLine, IncompleteRead, ...)
        raise ConnectionFailed(f"{what}: malformed answer: {type(e).__name__}: {e}") from e
