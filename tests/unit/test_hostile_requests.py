"""Hostile requests at the public entry tasks (security issue 15, items 5, 7, 10): caller-chosen job ids,
trailing newlines that ``$`` lets through, dates out of range or of the wrong type.

The entry task runs in this process (``Task.apply``) against the session's Redis; every request here is
refused before a chain would start, so nothing is enqueued.
"""

from __future__ import annotations

import uuid

import pytest

from base.errors import InvalidInput
from base.identifiers import TableName, check_job_id, identifier
from backup.enqueue import check_key
from backup.window import export_window, parse_date


def entry(task_name: str):
    import tasks.edge_export  # noqa: F401  (registers the entry tasks)
    import tasks.table_backup  # noqa: F401
    import tasks.restore_customer_files  # noqa: F401
    from workers.app import app

    return app.tasks[task_name]


def call(task_name: str, job_id, **kwargs) -> dict:
    return entry(task_name).apply(kwargs=kwargs, task_id=job_id).get()


# -- item 7: fullmatch, not match with "$" ------------------------------------------------------------------

@pytest.mark.parametrize("text", ["db.t\n", "db\n.t", "db.t\r", "db.t\x00"])
def test_table_name_with_a_trailing_newline_is_refused(text):
    with pytest.raises(InvalidInput, match="invalid"):
        TableName.parse(text)


def test_identifier_and_idempotency_key_with_a_trailing_newline_are_refused():
    with pytest.raises(InvalidInput):
        identifier("partition_date\n")
    with pytest.raises(InvalidInput, match="idempotency_key"):
        check_key("nightly-1\n")
    assert check_key("nightly-1") == "nightly-1"


def test_echoed_values_are_truncated():
    with pytest.raises(InvalidInput) as caught:
        TableName.parse("x" * 1_000_000)
    assert len(caught.value.one_line()) < 400


# -- item 5: job ids -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("job_id", [uuid.uuid4().hex, str(uuid.uuid4())])
def test_job_id_rule_accepts_hex_and_uuid(job_id):
    assert check_job_id(job_id) == job_id


@pytest.mark.parametrize("job_id", ["/../../.zz", "abc", uuid.uuid4().hex + "\n", uuid.uuid4().hex.upper(),
                                    uuid.uuid4().hex[:31] + "/", 12345, None, "a" * 10_000])
def test_job_id_rule_refuses_the_rest(job_id):
    with pytest.raises(InvalidInput, match="invalid job id"):
        check_job_id(job_id)


def test_entry_task_refuses_a_path_like_job_id_and_writes_no_record(res, redis_client):
    out = call("backup.edge_export", "/../../.zz", table="mnaas.customer_traffic")
    assert out["state"] == "failed" and "invalid job id" in out["error"] and out["job_id"] is None
    prefix = res.settings.redis.key_prefix
    assert redis_client.keys(f"{prefix}:*/../../.zz*") == []


def test_entry_task_refuses_another_jobs_id_and_leaves_that_job_alone(res, redis_client):
    victim = uuid.uuid4().hex
    res.jobs.create(victim, "edge-export", "mnaas.victim", {"table": "mnaas.victim"}, ["lock", "export"])
    out = call("backup.edge_export", victim, table="mnaas.attacker", end="0001-03-01")
    assert out["state"] == "failed" and "already names a job" in out["error"]
    rec = res.jobs.get(victim)
    assert rec["state"] == "queued" and rec["target"] == "mnaas.victim" and rec["error"] is None


def test_a_second_request_under_a_used_job_id_is_refused_but_its_redelivery_is_not(res):
    from tasks.entry import claim_job_id

    job_id = uuid.uuid4().hex
    first = call("backup.edge_export", job_id, table="mnaas.t", end="20260101")  # refused in submit: record failed
    assert first["state"] == "failed"
    # the same request delivered again (same id, same arguments) goes on to the same answer
    assert claim_job_id(job_id, "edge-export", (), {"table": "mnaas.t", "end": "20260101"}) == job_id
    again = call("backup.edge_export", job_id, table="mnaas.t", end="20260101")
    assert again["job_id"] == job_id and again["state"] == "failed"
    # another request under that id: refused, the record keeps the first request's reason
    other = call("backup.edge_export", job_id, table="mnaas.other")
    assert other["state"] == "failed" and "another request" in other["error"]
    assert res.jobs.get(job_id)["target"] == "mnaas.t"


# -- item 10: dates and types --------------------------------------------------------------------------------

@pytest.mark.parametrize("end, problem", [
    ("0001-03-01", "from 1900-01-01 to 2999-12-31"),
    ("9999-12-01", "from 1900-01-01 to 2999-12-31"),
    (20260101, "expected a string YYYY-MM-DD"),
    ("20260101", "expected a string YYYY-MM-DD"),
    ("2026-02-30", "not a calendar date"),
    (["2026-01-01"], "expected a string YYYY-MM-DD"),
    ("2026-01-01\n", "expected a string YYYY-MM-DD"),
])
def test_bad_end_dates_fail_the_request_with_a_record(res, end, problem):
    job_id = uuid.uuid4().hex
    out = call("backup.edge_export", job_id, table="mnaas.customer_traffic", end=end)
    assert out["state"] == "failed"
    rec = res.jobs.get(job_id)
    assert rec["state"] == "failed" and rec["error"].startswith("InvalidInput: invalid end date")
    assert problem in rec["error"]


def test_dates_are_bounded_for_every_date_argument(res):
    with pytest.raises(InvalidInput, match="from 1900"):
        parse_date("0001-01-01")
    assert export_window(1, "2026-02-01", "UTC").start.isoformat() == "2026-01-01"
    job_id = uuid.uuid4().hex
    call("backup.restore_customer_files", job_id, customer="alpha", location="/tmp/x", since="0001-01-01")
    assert "since date" in res.jobs.get(job_id)["error"]
    job_id = uuid.uuid4().hex
    call("backup.table_backup", job_id, table="db.t", source="/data", versioned=True, day=20260101)
    assert "invalid day" in res.jobs.get(job_id)["error"]


def test_an_unexpected_error_in_validation_still_fails_the_request_with_a_record(res, monkeypatch):
    import backup.edge_export

    def broken(*args, **kwargs):
        raise ValueError("year 0 is out of range")

    monkeypatch.setattr(backup.edge_export, "validate_request", broken)
    job_id = uuid.uuid4().hex
    out = call("backup.edge_export", job_id, table="mnaas.customer_traffic")
    assert out["state"] == "failed"
    rec = res.jobs.get(job_id)
    assert rec["state"] == "failed" and rec["error"].startswith("InvalidInput: bad request for backup.edge_export")


# -- item 6: phases re-validate what they read from the job record --------------------------------------------

def _exported_record(res, tmp_path, **changes) -> dict:
    from base.text import run_id

    job_id, created = uuid.uuid4().hex, 1_780_000_000.0
    folder = res.settings.path(res.settings.edge_export.export_dir) / "mnaas.t" / run_id(created, job_id)
    rec = {"job_id": job_id, "created": created, "target": "mnaas.t",
           "args": {"window": {"start": "2026-01-01", "end": "2026-06-01"}},
           "outputs": {"rows": 1, "bytes": 10, "sha256": "0" * 64, "run_id": run_id(created, job_id),
                       "local_path": str(folder / "mnaas.t_20260101-20260601.csv.gz"),
                       "remote_uri": "sftp://127.0.0.1/backup/x"}}
    for key, value in changes.items():
        (rec if key == "target" else rec["outputs"])[key] = value
    return rec


def test_cleanup_deletes_only_this_workflows_archive_whatever_the_record_says(res, tmp_path):
    from types import SimpleNamespace

    from backup.edge_export import checked_archive, cleanup_phase

    victim = tmp_path / "precious.db"
    victim.write_bytes(b"keep me")
    export_root = res.settings.path(res.settings.edge_export.export_dir)
    for tampered in (str(victim), str(export_root / "mnaas.t" / ".." / ".." / victim.name),
                     str(export_root / "mnaas.t" / "20260101T000000Z-0123abcd" / "precious.db")):
        rec = _exported_record(res, tmp_path, local_path=tampered)
        ctx = SimpleNamespace(res=res, rec=rec, job_id=rec["job_id"], done=lambda *a, **k: None)
        with pytest.raises(InvalidInput, match="is not this job's archive"):
            cleanup_phase(ctx)
    assert victim.read_bytes() == b"keep me"
    good = _exported_record(res, tmp_path)
    assert checked_archive(res, good)[1].name == "mnaas.t_20260101-20260601.csv.gz"


@pytest.mark.parametrize("changes", [{"run_id": "../../../../tmp/x"}, {"run_id": "20260101T000000Z-0123abcd\n"},
                                     {"target": "mnaas.t/../../etc"}])
def test_transfer_target_is_rebuilt_from_checked_parts(res, tmp_path, changes):
    from backup.edge_export import remote_paths

    with pytest.raises(InvalidInput):
        remote_paths(res, _exported_record(res, tmp_path, **changes))
    final, tmp = remote_paths(res, _exported_record(res, tmp_path))
    assert final.startswith(res.settings.sftp.remote_dir.rstrip("/") + "/mnaas.t/") and ".." not in final


def test_a_phase_task_sent_by_hand_with_a_bad_job_id_is_refused():
    task = entry("backup.edge_export.cleanup")
    for payload in ({"job_id": "/../../x"}, {"job_id": None}, ["not", "a", "dict"]):
        with pytest.raises(InvalidInput, match="invalid job id"):
            task.apply(args=[payload]).get()


def test_flower_task_api_sends_only_public_entry_tasks():
    import asyncio

    from flower.api import tasks
    from tornado.web import HTTPError

    from workers.flower import restrict_task_api

    sent = []

    async def fake_post(self, taskname):
        sent.append(taskname)

    originals = {h: h.post for h in (tasks.TaskApply, tasks.TaskAsyncApply, tasks.TaskSend)}
    try:
        for handler in originals:
            handler.post = fake_post
        restrict_task_api({"backup.edge_export"})
        for handler in originals:
            with pytest.raises(HTTPError) as refused:
                asyncio.run(handler.post(None, "backup.edge_export.cleanup"))
            assert refused.value.status_code == 403
            asyncio.run(handler.post(None, "backup.edge_export"))
        assert sent == ["backup.edge_export"] * 3
    finally:
        for handler, post in originals.items():
            handler.post = post


@pytest.mark.parametrize("months", ["²", "١٢", "9" * 5000, 5.0, [5]])
def test_months_of_another_type_or_digit_system_is_invalid_input(res, months):
    from backup.edge_export import validate_request

    with pytest.raises(InvalidInput, match="invalid months"):
        validate_request(res, "mnaas.t", months=months)
