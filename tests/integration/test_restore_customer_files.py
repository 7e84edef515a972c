"""restore-customer-files end to end: back up with the real customer-files workflow, damage copies from
outside, restore through the worker (and ``backupctl restore``), compare the restored files byte for byte
with the sources.

The customer is ``alpha`` of the test config: primary copies on local disk, secondary copies on the
edge node (sshd on this machine, so its files are damaged here directly, as test_customer_files does).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from backup import customer_files as cf
from backup import restore_customer_files as rcf
from backup.locks import Held
from backup.runner import phase
from tests.conftest import CONFIG_PATH
from tests.helpers import backupctl, enqueue, hdfs, sink_counts, sink_tickets, wait_job
from tests.integration.test_customer_files import _lines, dest_path, reset, run

pytestmark = pytest.mark.integration

TASK = "backup.restore_customer_files"
CUSTOMER = "alpha"
HOUR_AGO = time.time() - 3600


def sample(seed: int = 14) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {"traffic_001.csv": _lines(rng, 120), "traffic_002.csv": _lines(rng, 7),
            "traffic no newline.csv": _lines(rng, 30)[:-1], "traffic_empty.txt": b"",
            "activation_crlf.csv": _lines(rng, 55, b"\r\n"), "actives_ünïcødé 東京.csv": "Nørd ✓ 日本\n".encode() * 11,
            "TOLL_01_ä.dat": _lines(rng, 40)}


@pytest.fixture(scope="module")
def cfg(settings):
    return settings.customer_files


@pytest.fixture(scope="module")
def backed_up(settings, cfg, redis_client, worker, celery_app) -> dict[tuple[str, str], bytes]:
    """alpha's files backed up by the real customer-files workflow (only alpha has files): (domain, name) → bytes."""
    from backup.resources import Resources

    res = Resources(settings, _redis=redis_client)
    root = Path(cfg.source_dirs[0])
    shutil.rmtree(root, ignore_errors=True)  # an earlier module's tree of every customer
    shutil.rmtree(settings.path(cfg.manifest_dir), ignore_errors=True)
    reset(res, cfg, settings)
    (root / CUSTOMER).mkdir(parents=True)
    files = {}
    for i, (name, data) in enumerate(sample().items()):
        path = root / CUSTOMER / name
        path.write_bytes(data)
        os.utime(path, (HOUR_AGO + i, HOUR_AGO + i))
        files[(cf.domain_of(cfg, name), name)] = data
    rec = run(celery_app, res)
    assert rec["state"] == "success" and rec["outputs"]["totals"]["copied"] == len(files), rec.get("error")
    return files


def restore(celery_app, res, location, **filters) -> dict:
    return wait_job(res, enqueue(celery_app, TASK, customer=CUSTOMER, location=str(location), **filters), timeout=120)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (temp files included: none may be left)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def expected_tree(files: dict, keep=lambda domain, name: True) -> dict[str, bytes]:
    return {f"{d}/{n}": data for (d, n), data in files.items() if keep(d, n)}


def by_name(rec: dict) -> dict[str, dict]:
    return {f"{f['domain']}/{f['file']}": f for f in rec["outputs"]["files"]}


@pytest.fixture
def damage(cfg, backed_up):
    """Change copies from outside (delete, flip a byte, truncate); every copy is put back afterwards."""
    changed: list[tuple[Path, bytes]] = []

    def change(role: str, name: str, how: str) -> Path:
        domain = cf.domain_of(cfg, name)
        path = dest_path(cfg, CUSTOMER, role, domain, name)
        data = path.read_bytes()
        changed.append((path, data))
        if how == "delete":
            path.unlink()
        elif how == "flip":
            path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
        else:
            path.write_bytes(data[:-3])
        return path

    yield change
    for path, data in changed:
        path.write_bytes(data)


def fresh_episode(res) -> None:
    res.alerter.success(rcf.WORKFLOW, CUSTOMER)


# -- round trip ------------------------------------------------------------------

def test_round_trip_through_the_cli_byte_for_byte(settings, res, backed_up, celery_app, tmp_path):
    target = tmp_path / "restored"
    out = backupctl("restore", "customer-files", CUSTOMER, "--to", str(target), "--wait", "--json",
                    "--timeout", "120", config=CONFIG_PATH)
    assert out.returncode == 0, out.stdout + out.stderr
    rec = json.loads(out.stdout)
    assert rec["state"] == "success" and rec["workflow"] == "restore-customer-files" and rec["target"] == CUSTOMER
    assert tree(target) == expected_tree(backed_up)
    totals = rec["outputs"]["totals"]
    assert totals == {"files": 7, "restored": 7, "present": 0, "failed": 0, "bytes": sum(map(len, backed_up.values())),
                      "from_primary": 7, "from_secondary": 0}
    for key, f in by_name(rec).items():
        data = backed_up[tuple(key.split("/", 1))]
        assert (f["status"], f["source"], f["bytes"], f["sha256"]) == ("restored", "primary", len(data),
                                                                        hashlib.sha256(data).hexdigest())
        assert f["source_uri"] == dest_path(settings.customer_files, CUSTOMER, "primary", *key.split("/", 1)).as_uri()
        assert f["target_uri"] == "file://" + quote(f"{target}/{key}") and f["rejected"] == {}
        assert f["recorded_in"].startswith("manifest ")
    assert rec["outputs"]["records"]["table_rows"] == 7 and rec["outputs"]["records"]["table_error"] is None

    # Again into the same folder: every file found there, verified, not rewritten.
    stamps = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in target.rglob("*") if p.is_file()}
    again = restore(celery_app, res, target)
    assert again["state"] == "success" and again["outputs"]["totals"]["present"] == 7, again.get("error")
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in target.rglob("*") if p.is_file()} == stamps


def test_a_restore_never_runs_beside_a_backup(res, backed_up, celery_app, tmp_path):
    held, _ = res.locks.acquire(cf.WORKFLOW, cf.TARGET, "a-customer-files-run")
    assert held is not None
    try:
        rec = restore(celery_app, res, tmp_path / "out")
    finally:
        res.locks.release(held)
    assert rec["state"] == "skipped" and rec["reason"] == "lock held by job a-customer-files-run"
    assert not (tmp_path / "out").exists()


# -- primary → secondary ---------------------------------------------------------

def test_a_missing_or_damaged_primary_is_restored_from_the_secondary(res, backed_up, celery_app, damage, tmp_path):
    damage("primary", "traffic_001.csv", "delete")
    damage("primary", "activation_crlf.csv", "flip")  # same size, another hash
    damage("primary", "TOLL_01_ä.dat", "truncate")
    rec = restore(celery_app, res, tmp_path / "out")
    assert rec["state"] == "success", rec.get("error")
    assert tree(tmp_path / "out") == expected_tree(backed_up)
    files = by_name(rec)
    assert files["traffic/traffic_001.csv"]["source"] == "secondary"
    assert "is missing" in files["traffic/traffic_001.csv"]["rejected"]["primary"]
    assert files["activations/activation_crlf.csv"]["source"] == "secondary"
    assert "ChecksumMismatch" in files["activations/activation_crlf.csv"]["rejected"]["primary"]
    assert "the backup recorded" in files["tolling/TOLL_01_ä.dat"]["rejected"]["primary"]
    assert files["traffic/traffic_001.csv"]["source_uri"].startswith("sftp://")
    assert {k for k, f in files.items() if f["source"] == "primary"} == set(files) - {
        "traffic/traffic_001.csv", "activations/activation_crlf.csv", "tolling/TOLL_01_ä.dat"}
    assert rec["outputs"]["totals"]["from_secondary"] == 3


def test_a_file_damaged_on_both_copies_fails_once_and_nothing_is_written(settings, res, backed_up, celery_app, damage,
                                                                        tmp_path):
    fresh_episode(res)
    damage("primary", "traffic_002.csv", "flip")
    damage("secondary", "traffic_002.csv", "truncate")
    mails0, tickets0 = sink_counts(settings)
    rec = restore(celery_app, res, tmp_path / "out")
    assert rec["state"] == "failed" and rec["phase"] == "verify"
    assert rec["error"].startswith("FatalError: restore of alpha: 1 of 7 file(s) cannot be restored, nothing was "
                                   "written"), rec["error"]
    assert "traffic/traffic_002.csv: no good backup copy (primary: ChecksumMismatch: " in rec["error"]
    assert "; secondary: ChecksumMismatch: sftp://" in rec["error"]
    assert by_name(rec)["traffic/traffic_002.csv"]["error"].startswith("no good backup copy")
    assert not (tmp_path / "out").exists()
    assert rec["alert_sent"] is True and sink_counts(settings) == (mails0 + 1, tickets0 + 1)
    assert "traffic_002.csv" in json.dumps(sink_tickets(settings)[-1])

    # The documented way out: narrow the restore to the other files.
    narrowed = restore(celery_app, res, tmp_path / "out", domain="activations")
    assert narrowed["state"] == "success"
    assert tree(tmp_path / "out") == expected_tree(backed_up, lambda d, n: d == "activations")
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1)


def test_a_copy_changed_after_verify_is_never_published(settings, res, backed_up, damage, tmp_path):
    """Phases inline: verify passes, then a copy changes; restore refuses its bytes and restores the others."""
    target = tmp_path / "out"
    job_id = rcf.submit(res, CUSTOMER, str(target), domain="traffic")["job_id"]
    for name, func in (("lock", rcf.lock_phase), ("plan", rcf.plan_phase), ("verify", rcf.verify_phase)):
        with phase(res, job_id, name) as ctx:
            func(ctx)
    damage("primary", "traffic_001.csv", "flip")
    try:
        with pytest.raises(Exception, match="1 of 4 file.s. failed, 3 restored") as raised:
            with phase(res, job_id, "restore") as ctx:
                rcf.restore_phase(ctx)
        assert "traffic/traffic_001.csv: source: FatalError: file://" in str(raised.value)
        assert "changed since it was verified" in str(raised.value)
    finally:
        res.locks.release(Held.from_dict(res.jobs.get(job_id)["lock"]))  # the chain's error handler would
    assert tree(target) == expected_tree(backed_up, lambda d, n: d == "traffic" and n != "traffic_001.csv")


def test_a_different_file_at_the_target_is_never_overwritten(settings, res, backed_up, celery_app, tmp_path):
    fresh_episode(res)
    mine = tmp_path / "out" / "traffic" / "traffic_001.csv"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"somebody else\n")
    rec = restore(celery_app, res, tmp_path / "out")
    assert rec["state"] == "failed" and rec["phase"] == "verify"
    assert ("traffic/traffic_001.csv: AlreadyExists: a different file is already at "
            f"file://{quote(str(mine))} (14 bytes instead of ") in rec["error"]
    assert tree(tmp_path / "out") == {"traffic/traffic_001.csv": b"somebody else\n"}


# -- filters ---------------------------------------------------------------------

def test_filters_restore_exactly_the_matching_files(settings, res, cfg, backed_up, celery_app, tmp_path):
    out = backupctl("restore", "customer-files", CUSTOMER, "--domain", "traffic", "--file", "traffic_0*",
                    "--to", str(tmp_path / "a"), "--wait", "--timeout", "120", config=CONFIG_PATH)
    assert out.returncode == 0, out.stdout + out.stderr
    assert tree(tmp_path / "a") == expected_tree(backed_up, lambda d, n: n.startswith("traffic_0") and d == "traffic")
    assert len(tree(tmp_path / "a")) == 2
    rec = restore(celery_app, res, tmp_path / "b", file="*ä*")
    assert tree(tmp_path / "b") == expected_tree(backed_up, lambda d, n: n == "TOLL_01_ä.dat"), rec.get("error")

    # --since: two files' copies said to be from 2020 (the manifest rewritten; the table dropped, so the
    # manifests alone decide, which the outputs say).
    from tests.integration.test_customer_files import execute

    manifest = next(settings.path(cfg.manifest_dir).glob("*.csv"))
    original = manifest.read_text(encoding="utf-8")
    rows = list(csv.DictReader(original.splitlines()))
    old = {"traffic_001.csv", "activation_crlf.csv"}
    for row in rows:
        if row["file"] in old:
            row["copied_at"] = "2020-01-05T10:00:00Z"
    try:
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=cf.MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        execute(settings, f"DROP TABLE IF EXISTS {cfg.final_table}")
        recent = restore(celery_app, res, tmp_path / "c", since="2020-01-06")
        assert recent["state"] == "success", recent.get("error")
        assert tree(tmp_path / "c") == expected_tree(backed_up, lambda d, n: n not in old)
        assert "NotFound" in recent["outputs"]["records"]["table_error"]
        everything = restore(celery_app, res, tmp_path / "d", since="2020-01-05")
        assert everything["state"] == "success", everything.get("error")
        assert tree(tmp_path / "d") == expected_tree(backed_up)
        fresh_episode(res)
        today = dt.datetime.now(dt.timezone.utc).date()
        none = restore(celery_app, res, tmp_path / "e", since=str(today + dt.timedelta(days=1)))
        assert none["state"] == "failed" and none["error"].startswith(
            "NotFound: no backed-up file of customer alpha matches (since ")
        assert not (tmp_path / "e").exists()
    finally:
        manifest.write_text(original, encoding="utf-8")


# -- bad input -------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["nobody", "--to", "{tmp}/x"], "unknown customer 'nobody' (configured: alpha, beta gmbh"),
    ([CUSTOMER, "--file", "traffic_[0-9.csv", "--to", "{tmp}/x"], "file glob 'traffic_[0-9.csv' has an unclosed '['"),
    ([CUSTOMER, "--file", "a/b.csv", "--to", "{tmp}/x"], "contains '/'"),
    ([CUSTOMER, "--since", "2026-13-01", "--to", "{tmp}/x"], "since '2026-13-01' is not a calendar date"),
    ([CUSTOMER, "--since", "yesterday", "--to", "{tmp}/x"], "since 'yesterday': use a date YYYY-MM-DD"),
    ([CUSTOMER, "--domain", "nodomain", "--to", "{tmp}/x"], "unknown domain 'nodomain'"),
    ([CUSTOMER, "--to", "{tmp}/x\ny"], "contains control characters"),
    ([CUSTOMER, "--to", "s3://bucket{tmp}/x"], "unknown scheme 's3'"),
    ([CUSTOMER, "--to", "relative/x"], "is a relative path"),
    ([CUSTOMER], "a restore needs a target location: --to LOCATION"),
    ([CUSTOMER, "--to", "{primary}/traffic"], "is inside alpha's primary backup folder"),
])
def test_bad_input_one_line_error_and_nothing_written(settings, res, cfg, tmp_path, argv, message):
    primary = cfg.customers[CUSTOMER].primary
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{primary}", primary) for a in argv]
    jobs_before = res.redis.zcard(f"{settings.redis.key_prefix}:jobs")
    out = backupctl("restore", "customer-files", *argv, config=CONFIG_PATH)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("backupctl: error: InvalidInput: "), out.stderr
    assert message in out.stderr
    assert res.redis.zcard(f"{settings.redis.key_prefix}:jobs") == jobs_before
    assert list(tmp_path.iterdir()) == []


def test_a_bad_request_from_another_service_is_a_failed_job_that_starts_nothing(res, worker, celery_app, tmp_path):
    rec = wait_job(res, enqueue(celery_app, TASK, customer=CUSTOMER, location=str(tmp_path / "x"), since="2026-02-30"))
    assert rec["state"] == "failed" and rec["error"] == "InvalidInput: since '2026-02-30' is not a calendar date"
    assert all(p["state"] == "pending" and p["deliveries"] == 0 for p in rec["phases"])
    assert list(tmp_path.iterdir()) == []


# -- HDFS ------------------------------------------------------------------------

def test_restore_into_hdfs_read_back_with_hadoops_own_client(settings, res, platform, backed_up, celery_app):
    folder = f"/restore-it-{int(time.time())}"
    with hdfs(settings) as admin:
        admin.mkdir(folder)
        admin._client.set_owner(folder, owner="backup")
    location = f"hdfs://backup@127.0.0.1:{settings.platform.namenode_http_port}{folder}"
    rec = restore(celery_app, res, location, domain="traffic")
    assert rec["state"] == "success", rec.get("error")
    names = sorted(n for d, n in backed_up if d == "traffic")
    # One JVM of Hadoop's client for every file: -cat writes them one after the other, in argument order.
    body = platform.hadoop.fs_shell("-cat", *(f"{folder}/traffic/{n}" for n in names)).stdout
    assert body == b"".join(backed_up[("traffic", n)] for n in names)
    listed = platform.hadoop.fs_shell("-ls", "-R", folder).stdout.decode()
    assert ".part" not in listed and "activations" not in listed
    assert all(f["verified_by"]["target"].startswith("hdfs file checksum") for f in rec["outputs"]["files"]), \
        rec["outputs"]["files"]


def test_verify_and_restore_retried_after_an_unreachable_secondary_restore_everything(settings, res, platform,
                                                                                     backed_up, damage, tmp_path):
    """Phases inline, each retried as the chain retries a ConnectionFailed: the edge node's sshd is stopped for
    the first attempt of verify and of restore (connections refused), then started again.  Found by the fault
    campaign's sshd-outage row: the first attempt's per-file findings were written over the plan's file list,
    so every retry failed (verify: ``KeyError: 'recorded_in'``; restore: ``no secondary copy recorded``)."""
    from base.errors import ConnectionFailed

    damage("primary", "traffic_001.csv", "delete")  # only the secondary has it: verify and restore read the edge node
    target = tmp_path / "out"
    job_id = rcf.submit(res, CUSTOMER, str(target))["job_id"]
    try:
        for name, func in (("lock", rcf.lock_phase), ("plan", rcf.plan_phase)):
            with phase(res, job_id, name) as ctx:
                func(ctx)
        for name, func in (("verify", rcf.verify_phase), ("restore", rcf.restore_phase)):
            platform.down(only=["sshd"])
            try:
                with pytest.raises(ConnectionFailed):
                    with phase(res, job_id, name) as ctx:
                        func(ctx)
            finally:
                platform.up(only=["sshd"], timeout=60)
            with phase(res, job_id, name, attempt=2) as ctx:
                func(ctx)
        with phase(res, job_id, "finish") as ctx:
            rcf.finish_phase(ctx)
    finally:
        held = res.jobs.get(job_id).get("lock")
        if held:
            res.locks.release(Held.from_dict(held))
    rec = res.jobs.get(job_id)
    assert rec["state"] == "success", rec.get("error")
    assert tree(target) == expected_tree(backed_up)
    assert by_name(rec)["traffic/traffic_001.csv"]["source"] == "secondary"
    totals = rec["outputs"]["totals"]  # the first restore attempt wrote the primary's files: found present after
    assert (totals["restored"] + totals["present"], totals["failed"], totals["from_secondary"]) == (len(backed_up), 0, 1)
    assert rec["outputs"].get("last_attempt") is None
