"""Issue 17's promise: a workflow added as one module and one registry entry is routed, enqueueable by name,
listed by the CLI and schedulable, without touching any other file (tests/hello_workflow.py is that module)."""

from __future__ import annotations


import pytest

from backup.resources import Resources
from bench.faultkit import PrivateRedis
from config.settings import load_settings
from config.workflows import WORKFLOWS, unregister
from tests.conftest import PORT_OFFSET, STATE, WorkerProc, write_config
from tests.helpers import wait_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hello():
    import tests.hello_workflow as module  # the one entry is registered by importing it

    yield module
    unregister("hello")


@pytest.fixture(scope="module")
def hello_broker(platform):
    # A broker of its own: the session's worker does not know this workflow and would drop its messages.
    server = PrivateRedis(6505 + PORT_OFFSET, STATE / "hello-redis").start()
    yield server
    server.stop()


def test_one_module_and_one_entry_make_a_routed_listed_schedulable_enqueueable_workflow(hello, hello_broker, tmp_path,
                                                                                        capsys):
    from config.schedule import beat_schedule
    from workers.app import app, create_app
    from workers.cli import build_parser

    assert "hello" in WORKFLOWS
    # Routed: the phase declared on io goes to io, the others and the entry task to default.
    router = app.amqp.router
    assert router.route({}, "backup.hello.greet")["queue"].name == "io"
    assert router.route({}, "backup.hello.lock")["queue"].name == "default"
    assert router.route({}, "backup.hello")["queue"].name == "default"

    # Listed by the CLI, with its own option, and nothing of the other workflows' options.
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "-h"])
    assert "hello" in capsys.readouterr().out
    args = parser.parse_args(["run", "hello", "--greeting", "hi"])
    assert (args.workflow, args.greeting) == ("hello", "hi")
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "hello", "--months", "3"])

    # Schedulable: the config check knows it, and beat fires its entry task by name.
    config = write_config(tmp_path / "hello.yaml", {
        "redis": {"url": hello_broker.url, "key_prefix": "mbhello"},
        "schedules": [{"name": "greetings", "workflow": "hello", "cron": "0 7 * * *", "timezone": "UTC",
                       "kwargs": {"greeting": "morning"}}]})
    settings = load_settings(config)
    entry = beat_schedule(settings)["greetings"]
    assert (entry["task"], entry["kwargs"]) == ("backup.hello", {"greeting": "morning"})

    # Enqueueable by name: a real worker (celery -A tests.hello_workflow) runs it through its phases.
    res = Resources(settings)
    client = create_app(settings)
    worker = WorkerProc(config, "hello", app=client, app_module="tests.hello_workflow").start()
    try:
        job_id = client.send_task("backup.hello", kwargs={"greeting": "morning"}).id
        rec = wait_job(res, job_id, 60)
        assert rec["state"] == "success", rec
        assert rec["outputs"]["said"] == "morning, world"
        assert [(p["name"], p["state"]) for p in rec["phases"]] == [
            ("lock", "success"), ("greet", "success"), ("finish", "success")]
        # The request contract is the declaration's: an unknown argument fails the job record, loudly.
        bad = client.send_task("backup.hello", kwargs={"greting": "x"}).id
        rec = wait_job(res, bad, 60)
        assert rec["state"] == "failed"
        assert "unexpected keyword argument 'greting'" in rec["error"]
        assert "accepted keyword arguments: greeting, idempotency_key" in rec["error"]
    finally:
        worker.stop()
