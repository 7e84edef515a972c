"""Hostile entries in customer source folders (security issue 15, items 3 and 4): symbolic links, link loops,
fifos, a customer folder that is a link, names that are not UTF-8 or hold control characters.

The customer-files phases lock → discover → copy run in this process on local folders, against the session's
Redis under a key prefix of their own (nothing shared with other tests); collect (Hive) is not needed to see
the manifest rows, which ``manifest_rows`` builds from the plan and the per-file results.
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid

import pytest
import yaml

from backup import customer_files as cf
from backup.resources import Resources
from backup.runner import phase
from base.errors import InvalidInput
from config.settings import load_settings
from storage.local import LocalBackend
from tests.conftest import TEST_CONFIG
from tests.helpers import customer_files_until_collect

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for backups\n"


@pytest.fixture
def tree(tmp_path, redis_client):
    src, out = tmp_path / "src", tmp_path / "out"
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "id_rsa").write_bytes(SECRET)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "traffic_elsewhere.csv").write_bytes(SECRET)
    alpha, gamma = src / "alpha", src / "gamma"
    alpha.mkdir(parents=True)
    gamma.mkdir()
    (alpha / "traffic_ok.csv").write_bytes(b"a;1\nb;2\n")
    (alpha / "traffic_line\u2028sep.csv").write_bytes(b"c;3\n")
    (alpha / "traffic_link.csv").symlink_to(tmp_path / "private" / "id_rsa")
    (alpha / "traffic_loop.csv").symlink_to(alpha / "traffic_loop.csv")
    os.mkfifo(alpha / "traffic_fifo.csv")
    (alpha / "traffic_cr\r.csv").write_bytes(b"d;4\n")
    fd = os.open(os.fsencode(alpha) + b"/traffic_\xff\xfe.csv", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"e;5\n")
    os.close(fd)
    (gamma / "traffic_g.csv").write_bytes(b"g;7\n")
    (src / "beta").symlink_to(tmp_path / "elsewhere")  # the customer folder itself is a link
    old = time.time() - 3600
    for entry in [*alpha.iterdir(), *gamma.iterdir()]:
        os.utime(entry, (old, old), follow_symlinks=False)
    customers = {c: {"primary": str(out / "p" / c), "secondary": str(out / "s" / c)} for c in ("alpha", "beta", "gamma")}
    config = copy.deepcopy(TEST_CONFIG)
    config["redis"]["key_prefix"] = f"hostile{uuid.uuid4().hex[:8]}"  # keys, lock and ledger of this test only
    # Only these three customers (the test config's others would open their remote locations).
    config["customer_files"].update(source_dirs=[str(src)], customers=customers, settle_seconds=0,
                                    manifest_dir=str(out / "manifests"), after_backup="keep")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    return Resources(load_settings(tmp_path / "cfg.yaml"), _redis=redis_client), tmp_path


run_until_collect = customer_files_until_collect


def test_links_fifos_and_bad_names_are_reported_per_file_and_the_rest_is_copied(tree):
    res, tmp_path = tree
    rec = run_until_collect(res)
    skipped = {(s["customer"], os.path.basename(s["path"])): s["reason"] for s in rec["outputs"]["skipped"]}
    assert skipped == {("alpha", "traffic_link.csv"): "not a regular file: symbolic link, not followed",
                       ("alpha", "traffic_loop.csv"): "not a regular file: symbolic link, not followed",
                       ("alpha", "traffic_fifo.csv"): "not a regular file: fifo, not followed",
                       ("beta", "beta"): "customer folder is a symbolic link, not followed"}
    counts = rec["outputs"]["customers"]
    assert (counts["alpha"]["skipped"], counts["alpha"]["refused"], counts["beta"]["skipped"]) == (3, 2, 1)
    rows = {(r["customer"], r["file"]): r for r in cf.manifest_rows(res, rec)}
    assert rows[("alpha", "traffic_ok.csv")]["status"] == "copied"
    assert rows[("alpha", "traffic_line\u2028sep.csv")]["status"] == "copied"
    assert rows[("gamma", "traffic_g.csv")]["status"] == "copied"
    cr, undecodable = rows[("alpha", "traffic_cr\\x0d.csv")], rows[("alpha", "traffic_\\xff\\xfe.csv")]
    assert (cr["status"], cr["error"]) == ("failed", "not copied: file name contains the control character U+000D")
    assert (undecodable["status"], undecodable["error"]) == ("failed", "not copied: file name is not valid UTF-8")
    assert len(rows) == 5
    # nothing a link pointed to reached a backup folder
    backed_up = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and "manifests" not in p.parts]
    assert sorted(p.name for p in backed_up) == sorted(["traffic_ok.csv", "traffic_line\u2028sep.csv",
                                                        "traffic_g.csv"] * 2)
    assert all(p.read_bytes() != SECRET for p in backed_up)


def test_local_reads_never_follow_a_link_nor_open_a_fifo(tmp_path):
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    os.mkfifo(tmp_path / "fifo")
    backend = LocalBackend()
    with pytest.raises(InvalidInput, match="symbolic link"):
        with backend.open_read(str(tmp_path / "link")):
            pass
    with pytest.raises(InvalidInput, match="not a regular file"):
        with backend.open_read(str(tmp_path / "fifo")):
            pass
    listed = {e.name: e.special for e in backend.list(str(tmp_path))}
    assert listed == {"fifo": "fifo", "link": "symbolic link", "secret": None}
    assert backend.lstat(str(tmp_path / "link")).special == "symbolic link"


@pytest.mark.parametrize("path", ["/backup/db.t\n/x.csv.gz", "/backup/a\rb", "/backup/nul\x00"])
def test_a_control_character_never_reaches_a_remote_command_line(path, tmp_path):
    import shlex

    from config.settings import SftpSettings
    from connectors.sftp import SftpTarget, openssh_upload_command, receiver_command

    with pytest.raises(InvalidInput, match="control character"):
        receiver_command(path, 0o600)
    key, hosts = tmp_path / "k", tmp_path / "known_hosts"
    key.write_text("x")
    hosts.write_text("")
    target = SftpTarget(SftpSettings(user="bkp", key_file=key, known_hosts=hosts), key, hosts)
    for how in ("in-stream", "paced-plain"):
        with pytest.raises(InvalidInput, match="control character"):
            openssh_upload_command(target, key, path, how)
    # Any other character stays one argument: the login shell's parse gives back the exact path.
    odd = "/backup/a \"b\"\\c\u2028'$(x)`y`;.gz"
    words = shlex.split(receiver_command(odd, 0o640).split(";", 1)[1])
    assert words[0:2] == ["exec", "python3"] and words[-2:] == [odd, "640"]


def test_one_unlistable_customer_folder_does_not_stop_the_others(tree, monkeypatch):
    from base.errors import FatalError

    res, tmp_path = tree
    listing = LocalBackend.list

    def list_failing_for_gamma(self, path):  # as a folder without read permission does (tests run as root here)
        if path.endswith("/gamma"):
            raise FatalError(f"list {path}: PermissionError: [Errno 13] Permission denied")
        return listing(self, path)

    monkeypatch.setattr(LocalBackend, "list", list_failing_for_gamma)
    rec = run_until_collect(res)
    reasons = [s["reason"] for s in rec["outputs"]["skipped"] if s["customer"] == "gamma"]
    assert len(reasons) == 1 and reasons[0].startswith("customer folder could not be listed")
    assert {r["file"] for r in cf.manifest_rows(res, rec) if r["status"] == "copied"} == \
        {"traffic_ok.csv", "traffic_line\u2028sep.csv"}


def _discovered(res) -> str:
    """A new customer-files job run through lock and discover; its id."""
    job_id = uuid.uuid4().hex
    cf.submit(res, job_id=job_id)
    for name in ("lock", "discover"):
        with phase(res, job_id, name) as ctx:
            cf.DEFINITION.phase(name).run(ctx)
    return job_id


def test_a_plan_changed_in_redis_never_picks_what_is_read(tree):
    """The plan between discover and copy lives in Redis: an entry pointing at /etc/… or at another customer's
    folder is a failed row, never read; the genuine entries are copied."""
    from backup.customer_files.ledger import load_plan, save_plan

    res, tmp_path = tree
    job_id = _discovered(res)
    plan = {c: load_plan(res, job_id, c) for c in ("alpha", "beta", "gamma")}
    genuine = plan["gamma"][0]
    plan["gamma"] += [{**genuine, "path": str(tmp_path / "private" / "id_rsa"), "domain": "traffic"},
                      {**genuine, "path": str(tmp_path / "src" / "alpha" / "traffic_ok.csv")},
                      {**genuine, "path": str(tmp_path / "src" / "gamma" / ".." / "alpha" / "traffic_ok.csv")},
                      {**genuine, "source": 7, "path": "/x/gamma/traffic_x.csv"}]
    save_plan(res, job_id, plan)
    with phase(res, job_id, "copy:gamma") as ctx:
        cf.copy_customer(ctx, "gamma")
    rows = [r for r in cf.manifest_rows(res, res.jobs.get(job_id)) if r["customer"] == "gamma"]
    assert [r["status"] for r in rows] == ["copied", "failed", "failed", "failed", "failed"]
    assert all("the plan was changed" in r["error"] for r in rows[1:])
    copied = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and "manifests" not in p.parts]
    assert sorted(p.name for p in copied) == ["traffic_g.csv", "traffic_g.csv"]


def test_a_result_changed_in_redis_to_hold_two_never_shifts_the_others(tree):
    """The results are read back in one decode (all entries as one JSON array): an entry changed by hand to hold two
    values must not move every later result onto the wrong file; it is refused as before, naming the extra data."""
    from backup.customer_files.ledger import _key, load_results

    res, tmp_path = tree
    job_id = _discovered(res)
    with phase(res, job_id, "copy:alpha") as ctx:
        cf.copy_customer(ctx, "alpha")
    results = load_results(res, job_id, "alpha")
    assert len(results) >= 2 and all(r["file"] in key for key, r in results.items())
    first = next(iter(results))
    res.redis.hset(_key(res, "results", job_id, "alpha"), first,
                   json.dumps(results[first]) + "," + json.dumps({**results[first], "file": "shifted.csv"}))
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        load_results(res, job_id, "alpha")
