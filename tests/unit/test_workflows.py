"""The workflow registry and declarations: routes, request contracts and CLI options all come from one place."""

from __future__ import annotations

import pytest

from backup.workflow import Option, Phase, Workflow, definition, definitions
from base.errors import ConfigError
from config.workflows import WorkflowEntry, register, workflow_tasks


def test_builtin_workflows_and_their_public_task_names():
    assert workflow_tasks() == {"edge-export": "backup.edge_export", "table-backup": "backup.table_backup",
                                "customer-files": "backup.customer_files",
                                "restore-edge-export": "backup.restore_edge_export",
                                "restore-table-backup": "backup.restore_table_backup",
                                "restore-customer-files": "backup.restore_customer_files",
                                "retention": "backup.retention",
                                "restore-drill": "backup.restore_drill"}
    assert [wf.name for wf in definitions()] == list(workflow_tasks())


@pytest.mark.parametrize("task, queue", [
    ("backup.edge_export", "default"), ("backup.edge_export.lock", "default"),
    ("backup.edge_export.transfer", "io"), ("backup.customer_files.copy", "io"),
    ("backup.customer_files.collect", "default"), ("backup.table_backup", "default"),
    ("backup.table_backup.lock", "spark"), ("backup.table_backup.load", "spark"),
    ("backup.table_backup.finish", "spark"), ("backup.stall_check", "default"), ("backup.on_chain_error", "default"),
    ("backup.edge_export_extra", "default"), ("backup.restore_customer_files.verify", "io"),
    ("backup.restore_customer_files.restore", "io"), ("backup.restore_customer_files.plan", "default"),
    ("backup.restore_edge_export", "default"), ("backup.restore_edge_export.fetch", "io"),
    ("backup.restore_edge_export.load", "spark"),
    ("backup.restore_table_backup", "default"), ("backup.restore_table_backup.swap", "spark"),
    ("backup.retention", "default"), ("backup.retention.delete", "io"),
    ("backup.restore_drill", "default"), ("backup.restore_drill.drill", "spark"),
])
def test_routes_follow_the_declared_queues(task, queue):
    from workers.app import app

    assert app.amqp.router.route({}, task)["queue"].name == queue


def test_request_contracts_are_the_submit_signatures():
    contract = {wf.name: list(wf.request_signature().parameters) for wf in definitions()}
    assert contract == {
        "edge-export": ["table", "months", "end", "idempotency_key"],
        "table-backup": ["table", "source", "suffix", "versioned", "retention", "day", "idempotency_key"],
        "customer-files": ["idempotency_key"],
        "restore-edge-export": ["table", "into", "job", "window", "latest", "replace", "replace_live",
                                "idempotency_key"],
        "restore-customer-files": ["customer", "location", "domain", "file", "since", "idempotency_key"],
        "restore-table-backup": ["table", "into", "replace", "replace_live", "version", "keep_partition_columns",
                                 "suffix", "idempotency_key"],
        "retention": ["workflow", "target", "dry_run", "idempotency_key"],
        "restore-drill": ["target", "idempotency_key"],
    }


def test_cli_request_fills_the_target_and_options():
    wf = definition("table-backup")
    request = wf.request_from_cli("db.t", {"source": "/x", "versioned": True, "suffix": None, "retention": 3,
                                           "day": None, "wait": True})
    assert request == {"table": "db.t", "source": "/x", "suffix": None, "versioned": True, "retention": 3,
                       "day": None}
    assert definition("customer-files").request_from_cli(None, {"wait": True}) == {}


@pytest.mark.parametrize("entry, message", [
    (WorkflowEntry("Edge_Export", "backup.x", "tasks.x"), "use lower-case words joined by '-'"),
    (WorkflowEntry("x", "backup.x; rm", "tasks.x"), "is not a dotted module name"),
    (WorkflowEntry("edge-export", "backup.other", "tasks.other"), "is already registered"),
    (WorkflowEntry("stall-check", "backup.x", "tasks.x"), "is reserved"),
])
def test_bad_registry_entries_are_refused(entry, message):
    with pytest.raises(ConfigError, match=message):
        register(entry)


def test_bad_declarations_are_refused():
    def submit(res, table, job_id=None):
        return {}

    with pytest.raises(ConfigError, match="unknown queue 'fast'"):
        Phase("copy", lambda ctx: {}, queue="fast")
    with pytest.raises(ConfigError, match="phase names repeat"):
        Workflow("x", "x", (Phase("a", lambda c: {}), Phase("a", lambda c: {})), submit, lambda res, table: None)
    with pytest.raises(ConfigError, match="CLI fills 'months', which submit\\(\\) does not take"):
        Workflow("x", "x", (Phase("a", lambda c: {}),), submit, lambda res, table: None,
                 options=(Option("--months", "months", "m", type=int),))
    with pytest.raises(ConfigError, match="unknown workflow 'nope'"):
        definition("nope")


def test_a_plan_must_take_the_request_arguments():
    def submit(res, table, months=None, job_id=None):
        return {}

    def plan(res, table):
        return {}
    with pytest.raises(ConfigError, match=r"plan\(\) takes \['table'\], the request is \['table', 'months'\]"):
        Workflow(name="x", summary="x", phases=(Phase("a", lambda ctx: {}),), submit=submit, validate=submit, plan=plan)
    assert all(list(__import__("inspect").signature(wf.plan).parameters)[1:] == wf.request_parameters()
               for wf in definitions() if wf.plan is not None)
    assert {wf.name for wf in definitions() if wf.plan is not None} == {"edge-export", "table-backup", "customer-files"}


@pytest.mark.parametrize("targets, ok", [
    (["edge-export:mnaas.t", "table-backup:db.t_1", "customer-files:beta gmbh"], True),
    (["edge-export:t"], False), (["restore:db.t"], False), (["customer-files:a\nb"], False),
    (["table-backup:db.t;drop"], False),
])
def test_drill_targets_are_checked_when_the_config_loads(targets, ok):
    from config.settings import RestoreDrillSettings

    if ok:
        assert RestoreDrillSettings(targets=targets).targets == targets
    else:
        with pytest.raises(ValueError, match="target"):
            RestoreDrillSettings(targets=targets)


def test_the_failure_cleanup_is_the_declared_one_bound_to_resources_resolved_when_it_runs(monkeypatch):
    """What beat's stall check, the fault campaign and the tests pass to ``check_stalls``: one function."""
    import types

    from backup import workflow
    from backup.workflow import failure_cleanup_for

    assert definition("edge-export").failure_cleanup.__name__ == "discard_remote_temp"
    calls, resolved = [], []
    real = workflow.definition
    monkeypatch.setattr(workflow, "definition", lambda name: types.SimpleNamespace(
        failure_cleanup=lambda res, rec: calls.append((res, rec))) if name == "edge-export" else real(name))

    def resources():
        resolved.append(1)
        return "the resources"
    cleanup = failure_cleanup_for("edge-export", resources)
    assert resolved == []  # bound lazily: nothing is opened until a job is cleaned up
    cleanup({"job_id": "j"})
    assert calls == [("the resources", {"job_id": "j"})] and resolved == [1]
    failure_cleanup_for("edge-export", "fixed")({"job_id": "k"})
    assert calls[-1] == ("fixed", {"job_id": "k"})
    assert failure_cleanup_for("retention", resources) is None  # declares none
    assert failure_cleanup_for("a-workflow-no-longer-run", resources) is None
