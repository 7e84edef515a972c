"""Redis over TLS (``rediss://``) and the enqueue-only ACL of the README's Security section, on a private
redis-server of this module (TLS port only, a self-signed certificate, a password given on stdin).

The session's shared Redis is not touched: ACL users are server-wide.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from tests.conftest import PORT_OFFSET
from tests.integration.test_alert_channels import self_signed

TLS_REDIS_PORT = 13406 + PORT_OFFSET
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """(CA file, admin password) of a TLS-only redis-server on 127.0.0.1."""
    from local_platform.services import wait_for_ports

    d = tmp_path_factory.mktemp("redis-tls")
    cert, key = self_signed(d, "redis", "IP:127.0.0.1")
    password = uuid.uuid4().hex
    conf = "\n".join(["port 0", f"tls-port {TLS_REDIS_PORT}", "bind 127.0.0.1", f"tls-cert-file {cert}",
                      f"tls-key-file {key}", "tls-auth-clients no", 'save ""', "appendonly no",
                      f"requirepass {password}", f"dir {d}", ""])
    log = open(d / "redis.log", "wb")
    proc = subprocess.Popen(["redis-server", "-"], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    proc.stdin.write(conf.encode())  # on stdin: the password is in no process' arguments
    proc.stdin.close()
    try:
        wait_for_ports([TLS_REDIS_PORT], 30, proc, d / "redis.log")
        yield cert, password
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _settings(settings, url: str):
    return settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": url, "outage_grace": 1})})


def test_rediss_refuses_a_certificate_it_cannot_verify(settings, tls_redis, monkeypatch):
    from backup.resources import redis_client

    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", tls_redis[1])
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis_client(_settings(settings, f"rediss://127.0.0.1:{TLS_REDIS_PORT}/0")).ping()


def test_rediss_with_the_servers_ca_carries_records_and_celery(settings, tls_redis, monkeypatch):
    """Job records (redis-py) and the broker and result backend (Celery) over verified TLS."""
    from backup.resources import redis_client
    from workers.app import celery_config

    ca, password = tls_redis
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", password)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # OpenSSL's way to name the trusted CAs
    s = _settings(settings, f"rediss://127.0.0.1:{TLS_REDIS_PORT}/0")
    assert redis_client(s).ping()
    from celery import Celery

    app = Celery("tls-check")
    app.conf.update(celery_config(s))
    with app.connection_for_write() as conn:  # today: ValueError, a rediss:// URL without ssl_cert_reqs
        conn.ensure_connection(max_retries=1)
    assert app.backend.client.ping()


def _readme_acl() -> str:
    text = " ".join((ROOT / "README.md").read_text().split())
    match = re.search(r"`(ACL SETUSER enqueuer [^`]+)`", text)
    assert match, "README's Security section lost its enqueue-only ACL"
    return match.group(1)


def test_the_readme_enqueue_only_acl_can_enqueue_and_read_records_and_nothing_else(settings, tls_redis, monkeypatch):
    ca, password = tls_redis
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    admin = redis.Redis(host="127.0.0.1", port=TLS_REDIS_PORT, password=password, ssl=True)
    caller_password = uuid.uuid4().hex
    admin.execute_command(*_readme_acl().replace("PASSWORD", caller_password).split())
    job_id = uuid.uuid4().hex
    admin.set(f"mb:job:{job_id}", '{"state": "queued"}')
    admin.set("mb:lock:edge-export:db.t", "someone")
    url = f"rediss://enqueuer:{caller_password}@127.0.0.1:{TLS_REDIS_PORT}/0"
    import ssl

    from celery import Celery

    client_app = Celery("caller", broker=url, backend=url)
    client_app.conf.update(broker_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED},
                           redis_backend_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED}, task_serializer="json")
    before = admin.llen("default")
    client_app.send_task("backup.edge_export", kwargs={"table": "db.t"}, task_id=uuid.uuid4().hex, queue="default")
    assert admin.llen("default") == before + 1
    caller = redis.Redis.from_url(url, ssl_cert_reqs="required")
    assert caller.get(f"mb:job:{job_id}") == b'{"state": "queued"}'
    for forbidden in (lambda: caller.set(f"mb:job:{job_id}", "{}"), lambda: caller.get("mb:lock:edge-export:db.t"),
                      lambda: caller.delete("default"), lambda: caller.lpop("default"),
                      lambda: caller.lpush("spark", "x"), lambda: caller.flushdb()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
    assert admin.get(f"mb:job:{job_id}") == b'{"state": "queued"}'
