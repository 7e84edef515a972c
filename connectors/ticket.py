"""Incident tickets as an HTTP POST of JSON to a webhook (replaces the legacy SDP ticket mail)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from base.errors import AuthFailed, ConnectionFailed, FatalError
from config.settings import Settings


def open_ticket(s: Settings, payload: dict) -> str:
    """POST the payload; returns the receiver's answer body (its ticket id, if any)."""
    data = json.dumps(payload).encode()
    req = urllib.request.Request(s.ticket.url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    token = s.secret("BACKUP_TICKET_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token.get_secret_value()}")
    try:
        with urllib.request.urlopen(req, timeout=s.ticket.timeout) as resp:
            return resp.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise AuthFailed(f"ticket webhook {s.ticket.url}: HTTP {e.code}") from e
        if e.code >= 500 or e.code == 429:
            raise ConnectionFailed(f"ticket webhook {s.ticket.url}: HTTP {e.code}") from e
        raise FatalError(f"ticket webhook {s.ticket.url}: HTTP {e.code}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionFailed(f"ticket webhook {s.ticket.url}: {e}") from e
