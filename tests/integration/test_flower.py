"""Flower in a real headless browser: a running workflow's tasks appear with their states.

Flower runs with basic auth against the session's worker (task events on).
Debian's Chromium is driven through its DevTools protocol (websocket-client):
the Authorization header is set for every request of the page, the tasks
page is loaded while an edge-export job runs and again when it is done, and
both screenshots are kept under tests/artifacts/.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket

from tests.conftest import CONFIG_PATH, PORT_OFFSET, ROOT
from tests.helpers import enqueue, wait_job, wait_until
from tests.ops_helpers import Proc, sample_table

pytestmark = pytest.mark.integration

FLOWER_PORT = 15555 + PORT_OFFSET
DEVTOOLS_PORT = 19222 + PORT_OFFSET
ARTIFACTS = ROOT / "tests" / "artifacts"
PHASES = ["lock", "export", "transfer", "cleanup", "finish"]


class DevTools:
    """A minimal Chrome DevTools protocol client over one page target."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return out["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def flower_login():
    return "ops", secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def flower(tmp_path_factory, worker, flower_login):
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    proc = Proc.backupctl(CONFIG_PATH, "flower", "--port", str(FLOWER_PORT), log=log,
                          env={"FLOWER_BASIC_AUTH": ":".join(flower_login)})
    proc.start().wait_for_http(f"http://127.0.0.1:{FLOWER_PORT}/healthcheck", timeout=60)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed (make deps installs it)"
    home = tmp_path_factory.mktemp("chromium")
    proc = Proc([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={home / 'profile'}", "--remote-debugging-address=127.0.0.1",
                 f"--remote-debugging-port={DEVTOOLS_PORT}", "--window-size=1400,900", "about:blank"],
                home / "chromium.log").start()
    try:
        proc.wait_for_http(f"http://127.0.0.1:{DEVTOOLS_PORT}/json/version", timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{DEVTOOLS_PORT}/json/list", timeout=5) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.close()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def flower_table(platform, settings):
    return sample_table(settings)


def _get(path: str, login: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{FLOWER_PORT}{path}")
    if login:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _post(path: str, body: dict, login: tuple[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{FLOWER_PORT}{path}", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    req.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, {}


def test_flower_sends_only_the_public_entry_tasks(flower, flower_login, res):
    """An internal phase trusts its job record (cleanup deletes the path it names): Flower's task API refuses it
    for every sending endpoint; a public entry task is sent and checks its request like any caller's."""
    forged = {"args": [{"job_id": "0" * 32}]}
    for endpoint in ("apply", "async-apply", "send-task"):
        status, _ = _post(f"/api/task/{endpoint}/backup.edge_export.cleanup", forged, flower_login)
        assert status == 403, endpoint
    status, sent = _post("/api/task/async-apply/backup.edge_export", {"args": ["bad table!"]}, flower_login)
    assert status == 200 and sent.get("task-id"), sent
    rec = wait_job(res, sent["task-id"], timeout=60)
    assert rec["state"] == "failed" and rec["error"].startswith("InvalidInput"), rec


def test_flower_refuses_to_start_without_login():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    out = subprocess.run([sys.executable, "-m", "workers.cli", "--config", str(CONFIG_PATH), "flower", "--port",
                          str(FLOWER_PORT + 1)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Flower needs a login: set FLOWER_BASIC_AUTH" in out.stderr


def test_flower_requires_login_except_metrics_and_healthcheck(flower, flower_login):
    assert _get("/tasks") == 401
    assert _get("/api/tasks") == 401
    assert _get("/tasks", ("ops", "wrong")) == 401
    assert _get("/tasks", flower_login) == 200
    assert _get("/metrics") == 200, "documented: Flower's /metrics needs no login, so it must be network-restricted"
    assert _get("/healthcheck") == 200


def _task_rows(tools: DevTools) -> list[list[str]]:
    return tools.evaluate("""Array.from(document.querySelectorAll('#tasks-table tbody tr'))
        .map(tr => Array.from(tr.cells).map(td => td.innerText.trim()))""") or []


def _load_tasks_page(tools: DevTools) -> list[list[str]]:
    tools.call("Page.navigate", url=f"http://127.0.0.1:{FLOWER_PORT}/tasks")
    wait_until(lambda: tools.evaluate("document.readyState") == "complete"
               and tools.evaluate("document.querySelectorAll('#tasks-table tbody tr td').length > 1"),
               20, "Flower's tasks table")
    return _task_rows(tools)


def _job_tasks(flower_login, job_id: str) -> dict[str, dict]:
    """Flower's own API: the tasks of one job, by uuid (the entry task's uuid is the job id)."""
    req = urllib.request.Request(f"http://127.0.0.1:{FLOWER_PORT}/api/tasks?limit=200")
    req.add_header("Authorization", "Basic " + base64.b64encode(":".join(flower_login).encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        tasks = json.load(r)
    return {uid: t for uid, t in tasks.items() if uid == job_id or job_id in str(t.get("args"))}


def _screenshot(tools: DevTools, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    path = ARTIFACTS / name
    path.write_bytes(png)
    return path


def test_running_workflow_tasks_appear_in_flower_with_their_states(flower, browser, flower_login, res, celery_app,
                                                                   flower_table):
    browser.call("Network.enable")
    token = base64.b64encode(":".join(flower_login).encode()).decode()
    browser.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
    browser.call("Page.enable")

    job_id = enqueue(celery_app, "backup.edge_export", table=flower_table)

    def running_view():
        rows = _load_tasks_page(browser)
        started = [r for r in rows if r[0].startswith("backup.edge_export.") and r[2] == "STARTED"]
        return rows if started and any(r[1] == job_id for r in rows) else None

    # While it runs: the entry task and the phases reached so far, one of them STARTED.
    rows = wait_until(running_view, 60, "a running phase of the job in Flower's tasks page")
    _screenshot(browser, "flower-tasks-running.png")
    assert next(r for r in rows if r[1] == job_id)[0] == "backup.edge_export"

    rec = wait_job(res, job_id, timeout=180)
    assert rec["state"] == "success", rec

    def all_succeeded():
        tasks = _job_tasks(flower_login, job_id)
        return tasks if len(tasks) == 1 + len(PHASES) and all(t["state"] == "SUCCESS" for t in tasks.values()) \
            else None

    phase_tasks = wait_until(all_succeeded, 30, "all tasks of the job SUCCESS in Flower")
    names = {t["name"] for t in phase_tasks.values()}
    assert names == {"backup.edge_export", *(f"backup.edge_export.{p}" for p in PHASES)}

    rows = _load_tasks_page(browser)
    shown = {r[1]: (r[0], r[2]) for r in rows}  # uuid → (name, state) as a person sees them
    for uid, task in phase_tasks.items():
        assert shown.get(uid) == (task["name"], "SUCCESS"), (uid, task["name"], rows)
    _screenshot(browser, "flower-tasks-done.png")
