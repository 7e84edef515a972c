"""Alert sinks for the local platform: an SMTP server and a ticket webhook that keep what they get.

Each received email is stored as ``<dir>/mail/<n>.eml`` and each ticket as
``<dir>/tickets/<n>.json``, written atomically, so tests and people can read them.

    python -m local_platform.sinks --dir .platform/sinks --smtp-port 8025 --http-port 8089
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_counter = itertools.count()
_counter_lock = threading.Lock()


def _store(folder: Path, suffix: str, data: bytes) -> Path:
    with _counter_lock:
        n = next(_counter)
    name = f"{os.getpid()}-{n:06d}{suffix}"
    tmp = folder / f".{name}.part"
    tmp.write_bytes(data)
    final = folder / name
    os.replace(tmp, final)
    return final


class _MailHandler:
    def __init__(self, folder: Path):
        self.folder = folder

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd hook name
        header = f"X-Envelope-From: {envelope.mail_from}\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\n".encode()
        _store(self.folder, ".eml", header + envelope.original_content)
        return "250 Message accepted for delivery"


def _ticket_handler(folder: Path):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            try:
                payload = json.loads(body)
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            record = {"path": self.path, "authorization": bool(self.headers.get("Authorization")), "body": payload}
            stored = _store(folder, ".json", json.dumps(record).encode())
            out = json.dumps({"ticket_id": stored.stem}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, fmt, *args):  # keep the log file quiet
            pass

    return Handler


def mail_sink(folder: Path, host: str, port: int, tls_context=None):
    """A started SMTP sink storing each message in ``folder``; with ``tls_context`` it offers STARTTLS with that
    certificate and refuses mail before it (as a relay that requires TLS does).  Stop it with ``.stop()``."""
    from aiosmtpd.controller import Controller

    folder.mkdir(parents=True, exist_ok=True)
    tls = {"tls_context": tls_context, "require_starttls": True} if tls_context is not None else {}
    smtp = Controller(_MailHandler(folder), hostname=host, port=port, **tls)
    smtp.start()
    return smtp


def main(argv: list[str] | None = None) -> None:
    """Run both sinks until killed."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--smtp-port", type=int, default=8025)
    ap.add_argument("--http-port", type=int, default=8089)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args(argv)
    mail_dir, ticket_dir = a.dir / "mail", a.dir / "tickets"
    mail_dir.mkdir(parents=True, exist_ok=True)
    ticket_dir.mkdir(parents=True, exist_ok=True)
    smtp = mail_sink(mail_dir, a.host, a.smtp_port)
    httpd = ThreadingHTTPServer((a.host, a.http_port), _ticket_handler(ticket_dir))
    try:
        httpd.serve_forever()
    finally:
        smtp.stop()


if __name__ == "__main__":
    main()
