"""Retention on the local platform: real sshd (the backup server), real Redis records, real worker.

The backup runs are made cheaply: a job record per run with fixed creation dates and the outputs an
edge-export or customer-files run writes, and the small files those outputs name, written on the edge
node (SFTP) and locally.  Then retention runs: through the session worker (``backupctl retention ...
--dry-run --wait``, and enqueued after a backup as the chain does), and inline (``run_phases_inline``).
Files the runs did not record (a foreign file in the backup folder, in a run's folder, one a record
points at from outside its run's folder) must survive every run.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import uuid
from pathlib import Path

import pytest

from backup.resources import Resources
from backup.retention import DAY, DEFINITION, DELETED_MARK, submit
from base.text import run_id
from config.settings import load_settings
from tests.conftest import CONFIG_PATH, STATE, write_config
from tests.helpers import backupctl, remote_files, run_phases_inline, wait_job, wait_until

pytestmark = pytest.mark.integration

RULES = "mnaas_test.ret_rules"  # the test config's rule for it: keep_runs 2, keep_days 10
AUTO = "mnaas_test.ret_auto"  # keep_runs 1
NAME = "{table}_20260101-20260601.csv.gz"
EDGE_PHASES = ["lock", "export", "transfer", "cleanup", "finish"]


def add_edge_run(res, sess, table: str, age_days: float, state: str = "success", remote: bool = True,
                 local: bool = False, remote_uri: str | None = None, remote_bytes: bytes | None = None) -> dict:
    """An edge-export run made ``age_days`` ago: its record and the files it names; returns what it made."""
    job_id = uuid.uuid4().hex
    created = time.time() - age_days * DAY
    rid = run_id(created, job_id)
    data = f"archive of {job_id}\n".encode()
    name = NAME.format(table=table)
    made = {"job_id": job_id, "remote": None, "local": None}
    out = {"rows": 1, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "run_id": rid,
           "local_path": str(Path(res.settings.edge_export.export_dir) / table / rid / name)}
    if remote:
        path = posixpath.join(res.settings.sftp.remote_dir, table, rid, name)
        sess.makedirs(posixpath.dirname(path))
        with sess.sftp.open(path, "wb") as f:
            f.write(remote_bytes if remote_bytes is not None else data)
        out["remote_uri"] = res.sftp().uri(path)
        made["remote"] = path
    if remote_uri:
        out["remote_uri"] = remote_uri
    out["local_kept"] = local  # what the cleanup phase records (keep_local)
    if local:
        p = Path(out["local_path"])
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        made["local"] = str(p)
    res.jobs.create(job_id, "edge-export", table, {"table": table}, EDGE_PHASES)
    res.redis.zadd(f"{res.settings.redis.key_prefix}:jobs", {job_id: created})  # the index orders by creation

    def finished(r):
        r.update(state=state, created=created, finished=created + 60)
        r["outputs"].update(out)
    res.jobs.update(job_id, finished)
    return made


def retention_job(res, workflow: str, target: str, dry_run: bool = False) -> dict:
    job_id = uuid.uuid4().hex
    assert submit(res, workflow, target, dry_run, job_id=job_id)["state"] == "queued"
    return run_phases_inline(res, DEFINITION, job_id)


@pytest.fixture(scope="module")
def mres(settings, redis_client):
    return Resources(settings, _redis=redis_client)


@pytest.fixture(scope="module")
def edge(platform, mres):
    """A series of edge-export runs of RULES with fixed ages, plus foreign files; {label: what it made}."""
    remote_root = posixpath.join(mres.settings.sftp.remote_dir, RULES)
    with mres.sftp().connect() as sess:
        sess.makedirs(posixpath.join(remote_root, "manual-copy"))
        foreign = [posixpath.join(remote_root, "operator-notes.txt"),
                   posixpath.join(remote_root, "manual-copy", NAME.format(table=RULES))]
        for path in foreign:
            with sess.sftp.open(path, "wb") as f:
                f.write(b"not made by any run\n")
        runs = {
            "s0": add_edge_run(mres, sess, RULES, 0),  # kept: newest
            "s3": add_edge_run(mres, sess, RULES, 3),  # kept: among the newest 2
            "s8": add_edge_run(mres, sess, RULES, 8),  # kept: younger than 10 days
            "s12": add_edge_run(mres, sess, RULES, 12),  # expired; a foreign file in its folder
            "f13": add_edge_run(mres, sess, RULES, 13, state="failed", remote=False, local=True),  # expired
            "s20": add_edge_run(mres, sess, RULES, 20, local=True),  # expired (keep_local left its local archive)
            "s25": add_edge_run(mres, sess, RULES, 25),  # expired, but a queued restore chose its archive
            "s30": add_edge_run(mres, sess, RULES, 30, remote_bytes=b"changed on the server since\n"),
            # a record naming a file outside its run's folder (damaged or forged): never deleted
            "s40": add_edge_run(mres, sess, RULES, 40, remote=False, remote_uri=mres.sftp().uri(foreign[1])),
        }
        s12_folder = posixpath.dirname(runs["s12"]["remote"])
        foreign.append(posixpath.join(s12_folder, "README.operator"))
        with sess.sftp.open(foreign[-1], "wb") as f:
            f.write(b"an operator's note inside a run folder\n")
    restore = uuid.uuid4().hex  # submitted (its archive chosen), its lock phase not run yet
    mres.jobs.create(restore, "restore-edge-export", RULES,
                     {"table": RULES, "archive": {"job_id": runs["s25"]["job_id"]}}, ["lock", "fetch"])
    yield {"runs": runs, "foreign": foreign, "root": remote_root}
    mres.jobs.update(restore, lambda r: r.update(state="skipped", reason="test over"))


def test_dry_run_lists_what_would_go_and_deletes_nothing(edge, mres, worker):
    before = remote_files(mres.settings, edge["root"])
    out = backupctl("retention", "edge-export", RULES, "--dry-run", "--wait", "--json", config=CONFIG_PATH)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    runs = edge["runs"]
    would = {a["uri"] for a in rec["outputs"]["delete"]}
    assert would == {mres.sftp().uri(runs[k]["remote"]) for k in ("s12", "s20", "s30")} | \
        {Path(runs[k]["local"]).as_uri() for k in ("f13", "s20")}
    assert rec["outputs"]["dry_run"] is True and rec["outputs"]["deleted"] == []
    assert any("s40" not in p and "is not an archive in its run's folder" in p for p in rec["outputs"]["problems"])
    assert remote_files(mres.settings, edge["root"]) == before
    assert all(Path(runs[k]["local"]).is_file() for k in ("f13", "s20"))


def test_retention_never_runs_beside_a_restore_of_the_target(edge, mres):
    held, _ = mres.locks.acquire("edge-export", RULES, "a-running-restore")  # a restore takes the backup's lock
    try:
        rec = retention_job(mres, "edge-export", RULES)
    finally:
        mres.locks.release(held)
    assert rec["state"] == "skipped" and "a-running-restore" in rec["reason"]
    assert all(Path(edge["runs"][k]["local"]).is_file() for k in ("f13", "s20"))


def test_retention_deletes_exactly_what_the_rule_expires_and_nothing_it_did_not_create(edge, mres):
    runs, s = edge["runs"], mres.settings
    rec = retention_job(mres, "edge-export", RULES)
    assert rec["state"] == "success", rec.get("error")
    out = rec["outputs"]
    deleted = {d["uri"] for d in out["deleted"]}
    assert deleted == {mres.sftp().uri(runs[k]["remote"]) for k in ("s12", "s20")} | \
        {Path(runs[k]["local"]).as_uri() for k in ("f13", "s20")}
    assert [d["uri"] for d in out["changed"]] == [mres.sftp().uri(runs["s30"]["remote"])]
    left = set(remote_files(s, edge["root"]))
    assert {runs[k]["remote"] for k in ("s0", "s3", "s8", "s25", "s30")} | set(edge["foreign"]) == left
    # the run folders emptied are removed; the one holding a foreign file stays
    s12_folder = posixpath.dirname(runs["s12"]["remote"])
    assert out["folders"][s12_folder] == "left (not empty)"
    assert out["folders"][posixpath.dirname(runs["s20"]["remote"])] == "removed"
    assert not Path(runs["f13"]["local"]).parent.exists() and not Path(runs["s20"]["local"]).exists()
    # every expired run whose files are gone is marked; the changed one and the kept ones are not
    verdicts = {r["job_id"]: r["verdict"] for r in out["runs"]}
    assert verdicts[runs["s25"]["job_id"]].startswith("keep: restore job")
    marked = {k for k, r in runs.items() if (mres.jobs.get(r["job_id"])["outputs"].get(DELETED_MARK) or {}).get("by")
              == rec["job_id"]}
    assert marked == {"s12", "f13", "s20"}
    # a second run finds nothing more to delete
    again = retention_job(mres, "edge-export", RULES)
    assert again["state"] == "success" and again["outputs"]["deleted"] == []
    assert [a["uri"] for a in again["outputs"]["changed"]] == [mres.sftp().uri(runs["s30"]["remote"])]
    assert set(remote_files(s, edge["root"])) == left


def test_a_successful_backup_with_a_rule_is_followed_by_retention(platform, mres, worker):
    from tasks.common import after_success

    with mres.sftp().connect() as sess:
        old = add_edge_run(mres, sess, AUTO, 5)
        new = add_edge_run(mres, sess, AUTO, 0)
    after_success(mres, "backup.edge_export.finish", new["job_id"])
    after_success(mres, "backup.edge_export.finish", new["job_id"])  # a redelivered last phase: enqueued once
    after_success(mres, "backup.edge_export.transfer", new["job_id"])  # not the last phase: nothing
    jobs = []

    def finished():
        jobs[:] = list(mres.jobs.history("retention", f"edge-export:{AUTO}"))
        return jobs and all(j["state"] in ("success", "failed", "skipped") for j in jobs)
    wait_until(finished, timeout=60, what="the retention run after the backup")
    time.sleep(1)  # a second job, if one were (wrongly) enqueued, would have a record by now
    jobs = list(mres.jobs.history("retention", f"edge-export:{AUTO}"))
    assert len(jobs) == 1 and jobs[0]["state"] == "success", jobs
    assert [d["uri"] for d in jobs[0]["outputs"]["deleted"]] == [mres.sftp().uri(old["remote"])]
    assert remote_files(mres.settings, posixpath.dirname(posixpath.dirname(new["remote"]))) == [new["remote"]]


def test_customer_files_manifests_and_copies_the_runs_made(platform, tmp_path):
    """Manifests, and with delete_copies the copies an expired run made (primary local, secondary on sshd);
    a copy a kept run found present, and a foreign file in the domain folder, survive."""
    cf = {"ret": {"primary": str(tmp_path / "primary"),
                  "secondary": f"sftp://127.0.0.1:{load_settings(CONFIG_PATH).sftp.port}{STATE}/edge/ret-cf"}}
    config = write_config(tmp_path / "ret.yaml", {
        "redis": {"key_prefix": f"mbret{uuid.uuid4().hex[:6]}"},  # its own records: no other test's runs
        "customer_files": {"customers": cf, "manifest_dir": str(tmp_path / "manifests")},
        "retention": {"customer_files": {"keep_runs": 1, "delete_copies": True}}})
    res = Resources(load_settings(config))
    from storage.locations import open_location

    backends = {role: open_location(res.settings, cf["ret"][role]) for role in ("primary", "secondary")}

    def copy(role: str, name: str) -> str:
        backend, base = backends[role]
        path = posixpath.join(base, "traffic", name)
        backend.mkdir(posixpath.dirname(path))
        backend.write_atomic(path, [name.encode()], overwrite=True)
        return backend.uri(path)

    def run(age: float, rows: list[tuple[str, str]]) -> tuple[str, str]:
        job_id = uuid.uuid4().hex
        created = time.time() - age * DAY
        manifest = Path(res.settings.customer_files.manifest_dir) / f"{run_id(created, job_id)}.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        lines = ["customer,domain,file,bytes,records,sha256,primary_uri,secondary_uri,copied_at,status,error"]
        for name, status in rows:
            lines.append(f"ret,traffic,{name},{len(name)},1,{'0' * 64},{copy('primary', name)},"
                         f"{copy('secondary', name)},2026-01-01T00:00:00Z,{status},")
        manifest.write_text("\n".join(lines) + "\n")
        res.jobs.create(job_id, "customer-files", "all", {}, ["lock", "collect", "flag"])
        res.redis.zadd(f"{res.settings.redis.key_prefix}:jobs", {job_id: created})
        res.jobs.update(job_id, lambda r: (r.update(state="success", created=created),
                                           r["outputs"].update(manifest=str(manifest))))
        return job_id, str(manifest)

    old_job, old_manifest = run(10, [("a_traffic.csv", "copied"), ("b_traffic.csv", "copied")])
    new_job, new_manifest = run(1, [("b_traffic.csv", "present"), ("c_traffic.csv", "copied")])
    foreign = Path(cf["ret"]["primary"]) / "traffic" / "x_traffic.csv"
    foreign.write_text("copied by hand\n")
    try:
        rec = retention_job(res, "customer-files", None)
        assert rec["state"] == "success", rec.get("error")
        assert {d["kind"] for d in rec["outputs"]["deleted"]} == {"manifest", "primary", "secondary"}
        assert {d["uri"].rsplit("/", 1)[-1] for d in rec["outputs"]["deleted"]} == \
            {Path(old_manifest).name, "a_traffic.csv"}
        assert not Path(old_manifest).exists() and Path(new_manifest).exists()
        for role in ("primary", "secondary"):
            backend, base = backends[role]
            names = sorted(e.name for e in backend.list(posixpath.join(base, "traffic")))
            assert names == (["b_traffic.csv", "c_traffic.csv", "x_traffic.csv"] if role == "primary"
                             else ["b_traffic.csv", "c_traffic.csv"])
    finally:
        for backend, _ in backends.values():
            backend.close()
        res.redis.delete(*res.redis.keys(f"{res.settings.redis.key_prefix}:*") or ["-"])
