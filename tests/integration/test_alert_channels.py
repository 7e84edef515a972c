"""The alert channels on real servers: SMTP with STARTTLS and a certificate, a ticket endpoint that answers
badly or redirects; and the alert path that must neither lose a later alert nor leave a job running.

The servers run in this process on loopback (aiosmtpd, http.server, a raw socket): no platform JVM needed.
Redis is the session's (its test database).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from base.errors import AuthFailed, FatalError
from tests.conftest import PORT_OFFSET

SMTP_TLS_PORT, SMTP_PORT = 13400 + PORT_OFFSET, 13401 + PORT_OFFSET
BAD_TICKET_PORT, REDIRECT_PORT, ELSEWHERE_PORT = 13402 + PORT_OFFSET, 13403 + PORT_OFFSET, 13404 + PORT_OFFSET


def self_signed(folder: Path, name: str, san: str) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) and key for ``san`` (e.g. ``IP:127.0.0.1``)."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName={san}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"), "mail-relay", "IP:127.0.0.1")


@pytest.fixture(scope="module")
def smtp_tls(tls_files, tmp_path_factory):
    """An SMTP relay that requires STARTTLS, with a self-signed certificate for 127.0.0.1."""
    import ssl

    from local_platform.sinks import mail_sink

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    folder = tmp_path_factory.mktemp("mail-tls")
    server = mail_sink(folder, "127.0.0.1", SMTP_TLS_PORT, tls_context=context)
    yield folder
    server.stop()


@pytest.fixture(scope="module")
def smtp_plain(tmp_path_factory):
    from local_platform.sinks import mail_sink

    folder = tmp_path_factory.mktemp("mail")
    server = mail_sink(folder, "127.0.0.1", SMTP_PORT)
    yield folder
    server.stop()


def _with(settings, **sections):
    return settings.model_copy(update={k: getattr(settings, k).model_copy(update=v) for k, v in sections.items()})


# -- SMTP STARTTLS (item 2) -------------------------------------------------------------------------------

def test_starttls_refuses_a_certificate_it_cannot_verify(settings, smtp_tls):
    from connectors.mail import send_mail

    s = _with(settings, smtp={"host": "127.0.0.1", "port": SMTP_TLS_PORT, "starttls": True})
    with pytest.raises(AuthFailed, match="TLS certificate refused"):
        send_mail(s, "subject", "body")
    assert list(smtp_tls.glob("*.eml")) == []  # nothing went out over the unverified channel


def test_starttls_with_the_relays_ca_delivers_and_checks_the_host_name(settings, smtp_tls, tls_files):
    from connectors.mail import send_mail

    s = _with(settings, smtp={"host": "127.0.0.1", "port": SMTP_TLS_PORT, "starttls": True, "ca_cert": tls_files[0]})
    send_mail(s, "verified", "body")
    assert len(list(smtp_tls.glob("*.eml"))) == 1
    # The same trusted certificate names 127.0.0.1 only: reached as "localhost", it is refused.
    wrong_name = _with(s, smtp={"host": "localhost"})
    with pytest.raises(AuthFailed, match="TLS certificate refused"):
        send_mail(wrong_name, "wrong name", "body")
    assert len(list(smtp_tls.glob("*.eml"))) == 1


def test_starttls_configured_but_not_offered_is_refused(settings, smtp_plain):
    from connectors.mail import send_mail

    s = _with(settings, smtp={"host": "127.0.0.1", "port": SMTP_PORT, "starttls": True})
    with pytest.raises(FatalError, match="refusing to send without TLS"):
        send_mail(s, "subject", "body")
    assert list(smtp_plain.glob("*.eml")) == []


# -- ticket endpoint (item 8) -----------------------------------------------------------------------------

class _Server:
    """A loopback HTTP server in a thread, recording each request's path and Authorization header."""

    def __init__(self, port: int, answer):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append((self.command, self.path, self.headers.get("Authorization")))
                answer(self)
            do_POST = do_GET = _any

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def bad_status_line():
    """A ticket endpoint answering every request with a malformed status line (http.client.BadStatusLine)."""
    listener = socket.create_server(("127.0.0.1", BAD_TICKET_PORT))
    hits = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                hits.append(1)
                conn.sendall(b"HTTP/1.1 TWO-HUNDRED OK\r\n\r\n")
    threading.Thread(target=serve, daemon=True).start()
    yield hits
    listener.close()


@pytest.fixture(scope="module")
def redirecting():
    """A ticket endpoint on loopback that redirects (302) to another server; that one records who comes."""
    def ok(h):
        h.send_response(201)
        h.send_header("Content-Length", "2")
        h.end_headers()
        h.wfile.write(b"{}")

    def moved(h):
        h.send_response(302)
        h.send_header("Location", f"http://127.0.0.1:{ELSEWHERE_PORT}/collect")
        h.send_header("Content-Length", "0")
        h.end_headers()
    elsewhere, redirect = _Server(ELSEWHERE_PORT, ok), _Server(REDIRECT_PORT, moved)
    yield redirect, elsewhere
    redirect.close()
    elsewhere.close()


def test_a_redirect_is_not_followed_with_the_bearer_token(settings, redirecting, monkeypatch):
    from connectors.ticket import open_ticket

    redirect, elsewhere = redirecting
    monkeypatch.setenv("BACKUP_TICKET_TOKEN", "tok-" + uuid.uuid4().hex)
    s = _with(settings, ticket={"url": f"http://127.0.0.1:{REDIRECT_PORT}/tickets"})
    with pytest.raises(FatalError, match="redirect .* not followed"):
        open_ticket(s, {"title": "t"})
    assert redirect.seen and redirect.seen[-1][2].startswith("Bearer tok-")
    assert elsewhere.seen == []  # today urllib follows the 302 and hands the token to whatever it points to


# -- the alert path (item 8) ------------------------------------------------------------------------------

def _job(res, target: str) -> dict:
    job_id = uuid.uuid4().hex
    res.alerter.success("edge-export", target)
    res.jobs.create(job_id, "edge-export", target, {}, ["export"])
    return res.jobs.get(job_id)


def _count(folder: Path) -> int:
    return len(list(folder.glob("*.eml")))


def test_a_malformed_ticket_answer_is_recorded_and_the_ticket_is_owed_to_the_next_failure(
        settings, redis_client, smtp_plain, bad_status_line, redirecting):
    from backup.resources import Resources
    from backup.runner import fail_job

    s = _with(settings, smtp={"host": "127.0.0.1", "port": SMTP_PORT},
              ticket={"url": f"http://127.0.0.1:{BAD_TICKET_PORT}/tickets"})
    res = Resources(s, _redis=redis_client)
    target = f"db.t_{uuid.uuid4().hex[:8]}"
    mails, hits = _count(smtp_plain), len(bad_status_line)

    first = fail_job(res, _job(res, target)["job_id"], "export", FatalError("boom"))
    assert first["state"] == "failed" and first["alert_sent"] is False  # not left running, the failure recorded
    assert first["alert"]["mail"]["sent"] is True
    assert first["alert"]["ticket"]["sent"] is False and "BadStatusLine" in first["alert"]["ticket"]["error"]
    assert (_count(smtp_plain), len(bad_status_line)) == (mails + 1, hits + 1)

    # The next failure of the same target is not "already alerted": the ticket is still owed (and only it).
    second = fail_job(res, _job_keep(res, target)["job_id"], "export", FatalError("boom again"))
    assert second["state"] == "failed" and "already alerted" not in second["alert"].get("reason", "")
    assert "mail" not in second["alert"] and second["alert"]["ticket"]["sent"] is False
    assert (_count(smtp_plain), len(bad_status_line)) == (mails + 1, hits + 2)

    # Once the ticket goes out, the episode is closed for both channels until a success.
    fixed = _with(s, ticket={"url": f"http://127.0.0.1:{ELSEWHERE_PORT}/tickets"})
    res_fixed = Resources(fixed, _redis=redis_client)
    third = fail_job(res_fixed, _job_keep(res, target)["job_id"], "export", FatalError("boom 3"))
    fourth = fail_job(res_fixed, _job_keep(res, target)["job_id"], "export", FatalError("boom 4"))
    assert third["alert_sent"] is True and list(third["alert"]) == ["sent", "ticket"]
    assert fourth["alert_sent"] is False and "already alerted" in fourth["alert"]["reason"]
    assert _count(smtp_plain) == mails + 1
    res.alerter.success("edge-export", target)


def _job_keep(res, target: str) -> dict:
    """A new job of ``target`` without ending its episode."""
    job_id = uuid.uuid4().hex
    res.jobs.create(job_id, "edge-export", target, {}, ["export"])
    return res.jobs.get(job_id)


def test_a_failing_mail_does_not_stop_the_ticket(settings, redis_client, redirecting):
    from backup.resources import Resources
    from backup.runner import fail_job

    redirect, elsewhere = redirecting
    # Mail to a closed port; the ticket to a server that answers 302 (a channel error too, but a reached one).
    s = _with(settings, smtp={"host": "127.0.0.1", "port": BAD_TICKET_PORT + 90},
              ticket={"url": f"http://127.0.0.1:{ELSEWHERE_PORT}/tickets"})
    res = Resources(s, _redis=redis_client)
    target = f"db.t_{uuid.uuid4().hex[:8]}"
    before = len(elsewhere.seen)
    rec = fail_job(res, _job(res, target)["job_id"], "export", FatalError("boom"))
    assert rec["state"] == "failed"
    assert rec["alert"]["mail"]["sent"] is False and "ConnectionFailed" in rec["alert"]["mail"]["error"]
    assert rec["alert"]["ticket"]["sent"] is True and len(elsewhere.seen) == before + 1
    assert redis_client.get(res.alerter._key("edge-export", target)).decode().endswith(":owed:mail")
    res.alerter.success("edge-export", target)
