"""The enqueue contract, exercised from a service that has only celery and redis installed.

A fresh virtual environment (``python -m venv``) gets celery and redis at the
versions of requirements.txt (celery with its ``redis`` extra, as a caller
installs it), from a local wheel cache (filled from PyPI the
first time); it cannot import this project.  examples/enqueue_client.py runs
in it against the session's real worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.ops_helpers import sample_table

pytestmark = pytest.mark.integration

WHEELS = Path(tempfile.gettempdir()) / "mediation-backup-client-wheels"
CLIENT_PACKAGES = ("celery", "redis")


def _versions() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pins = dict(line.strip().split("==", 1) for line in lines if line.split("==")[0].strip() in CLIENT_PACKAGES)
    assert set(pins) == set(CLIENT_PACKAGES), f"requirements.txt must pin {CLIENT_PACKAGES}: {pins}"
    return pins


def _requirements() -> list[str]:
    """What a calling service installs: celery with its Redis transport extra, and redis."""
    v = _versions()
    return [f"celery[redis]=={v['celery']}", f"redis=={v['redis']}"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """(python of the client venv, folder holding the example) — no project on its path."""
    home = tmp_path_factory.mktemp("client")
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    offline = pip + ["install", "--no-index", "--find-links", str(WHEELS), *_requirements()]
    if subprocess.run(offline, capture_output=True, timeout=300).returncode != 0:
        subprocess.run(pip + ["download", "--only-binary=:all:", "--dest", str(WHEELS), *_requirements()],
                       check=True, timeout=600)
        subprocess.run(offline, check=True, timeout=300)
    shutil.copy(ROOT / "examples" / "enqueue_client.py", home / "enqueue_client.py")
    return venv / "bin" / "python", home


def _run(client, settings, kwargs: dict, *extra: str) -> subprocess.CompletedProcess:
    python, home = client
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}  # nothing of the project's environment
    return subprocess.run([str(python), "enqueue_client.py", "--redis-url", settings.redis.url,
                           "--prefix", settings.redis.key_prefix, "--kwargs", json.dumps(kwargs),
                           "--timeout", "180", "--json", *extra],
                          cwd=home, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def client_table(platform, settings):
    return sample_table(settings)


def test_client_venv_cannot_import_the_project(client):
    python, home = client
    out = subprocess.run([str(python), "-c", "import celery, redis; print(celery.__version__, redis.__version__)"],
                         cwd=home, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [_versions()["celery"], _versions()["redis"]]
    for module in ("backup", "workers", "config"):
        out = subprocess.run([str(python), "-c", f"import {module}"], cwd=home, capture_output=True, text=True,
                             env={"PATH": os.environ["PATH"]})
        assert out.returncode != 0 and f"No module named '{module}'" in out.stderr


def test_client_enqueues_follows_to_success_and_idempotency_key_returns_same_job(client, settings, res, worker,
                                                                                 client_table):
    out = _run(client, settings, {"table": client_table}, "--idempotency-key", "client-test-1")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert rec["state"] == "success" and rec["workflow"] == "edge-export" and rec["target"] == client_table
    assert rec["outputs"]["rows"] > 0 and rec["outputs"]["remote_uri"]
    assert rec["idempotency_key"] == "client-test-1"
    assert rec == res.jobs.get(rec["job_id"])

    jobs_before = res.redis.zcard(f"{settings.redis.key_prefix}:jobs")
    again = _run(client, settings, {"table": client_table}, "--idempotency-key", "client-test-1")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["job_id"] == rec["job_id"]
    assert res.redis.zcard(f"{settings.redis.key_prefix}:jobs") == jobs_before, "the second request started a job"


@pytest.mark.parametrize("kwargs, extra, error", [
    ({"table": "no_database_part"}, [], "InvalidInput: "),
    ({"table": "mnaas_ops.traffic_client", "months": 0}, [], "InvalidInput: "),
    ({"tabel": "mnaas_ops.traffic_client"}, [], "unexpected keyword argument 'tabel'"),
    ({}, [], "missing a required argument: 'table'"),
    ({"table": "mnaas_ops.traffic_client"}, ["--idempotency-key", "has spaces"], "InvalidInput: idempotency_key"),
], ids=["bad-table", "bad-months", "unknown-argument", "missing-argument", "bad-idempotency-key"])
def test_bad_request_fails_in_the_job_record_and_starts_no_phase(client, settings, res, worker, kwargs, extra,
                                                                 error):
    out = _run(client, settings, kwargs, *extra)
    assert out.returncode == 1, out.stderr
    rec = json.loads(out.stdout)
    assert rec["state"] == "failed" and error in rec["error"], rec
    assert "\n" not in rec["error"]
    assert all(p["state"] == "pending" and p["deliveries"] == 0 for p in rec["phases"])
    assert res.locks.holder("edge-export", rec["target"]) is None


def test_idempotency_key_is_per_workflow_and_a_redelivery_goes_on(res):
    from backup.enqueue import submit_once

    def submit(job_id, workflow="edge-export"):
        return lambda: res.jobs.create(job_id, workflow, "mnaas_ops.keys", {}, ["lock"])

    first = submit_once(res, "edge-export", "job-key-1", "nightly-1", submit("job-key-1"))
    assert first["job_id"] == "job-key-1" and first["idempotency_key"] == "nightly-1"
    duplicate = submit_once(res, "edge-export", "job-key-2", "nightly-1", submit("job-key-2"))
    assert duplicate["job_id"] == "job-key-1" and res.jobs.find("job-key-2") is None
    redelivered = submit_once(res, "edge-export", "job-key-1", "nightly-1", submit("job-key-1"))
    assert redelivered["job_id"] == "job-key-1" and redelivered["state"] == "queued"
    other = submit_once(res, "table-backup", "job-key-3", "nightly-1", submit("job-key-3", "table-backup"))
    assert other["job_id"] == "job-key-3"
    ttl = res.redis.ttl(f"{res.settings.redis.key_prefix}:idem:edge-export:nightly-1")
    assert 0 < ttl <= res.settings.enqueue.idempotency_window
