"""customer-files' ledger keeps only what still saves work: the entries of files that left their source folder
(moved or deleted after their backup, or changed since) are removed by the next run's discover phase, and nothing
else is (a folder missing or unlistable keeps its entries; ``plan`` removes nothing).

The phases lock → discover → copy run in this process on local folders, against the session's Redis under a key
prefix of this test's own (as in ``test_hostile_source_files``).
"""

from __future__ import annotations

import copy
import os
import time
import uuid

import pytest
import yaml

from backup import customer_files as cf
from backup.customer_files.ledger import _key
from backup.resources import Resources
from config.settings import load_settings
from tests.conftest import TEST_CONFIG
from tests.helpers import customer_files_until_collect

OLD = time.time() - 3600  # settled long ago


def _write(path, data: bytes, mtime: float = OLD) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


@pytest.fixture
def tree(tmp_path, redis_client):
    src, out = tmp_path / "src", tmp_path / "out"
    for customer, names in (("alpha", ("a1", "a2", "a3")), ("gamma", ("g1",))):
        (src / customer).mkdir(parents=True)
        for name in names:
            _write(src / customer / f"traffic_{name}.csv", f"{name};1\n".encode())
    customers = {c: {"primary": str(out / "p" / c), "secondary": str(out / "s" / c)} for c in ("alpha", "gamma")}
    config = copy.deepcopy(TEST_CONFIG)
    config["redis"]["key_prefix"] = f"ledger{uuid.uuid4().hex[:8]}"  # keys, lock and ledger of this test only
    config["customer_files"].update(source_dirs=[str(src)], customers=customers, settle_seconds=0,
                                    manifest_dir=str(out / "manifests"), after_backup="keep")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    return Resources(load_settings(tmp_path / "cfg.yaml"), _redis=redis_client), src


def run_until_collect(res) -> dict:
    """A new run through lock, discover and every copy task; its record.  The lock is then freed (collect and flag,
    which need Hive, would free it)."""
    rec = customer_files_until_collect(res)
    res.redis.delete(res.locks.key(cf.WORKFLOW, cf.TARGET))
    return rec


def ledger(res, customer: str) -> dict[str, tuple[int, float]]:
    """The customer's ledger entries: file name -> (size, mtime) of the state backed up."""
    entries = {}
    for field in res.redis.hkeys(_key(res, "ledger", customer)):
        path, size, mtime = field.decode().split("\0")
        name = os.path.basename(path)
        assert name not in entries, f"two ledger entries for {name}"
        entries[name] = (int(size), float(mtime))
    return entries


def test_entries_of_files_gone_or_changed_are_removed_and_nothing_else(tree):
    res, src = tree
    first = run_until_collect(res)
    assert first["outputs"]["ledger_pruned"] == 0
    assert set(ledger(res, "alpha")) == {"traffic_a1.csv", "traffic_a2.csv", "traffic_a3.csv"}
    assert set(ledger(res, "gamma")) == {"traffic_g1.csv"}

    # a1 moved away after its backup; a2 rewritten (new size and mtime); a3 untouched; gamma's folder gone
    # (a source whose mount vanished looks like this): its entry must stay
    (src / "alpha" / "traffic_a1.csv").unlink()
    _write(src / "alpha" / "traffic_a2.csv", b"a2;1\na2;2\n", OLD + 60)
    (src / "gamma").rename(src.parent / "gamma-away")
    before = {c: ledger(res, c) for c in ("alpha", "gamma")}
    cf.plan(res)  # the dry run reads the ledger and removes nothing
    assert {c: ledger(res, c) for c in ("alpha", "gamma")} == before

    second = run_until_collect(res)
    assert second["outputs"]["ledger_pruned"] == 2, second["outputs"]  # a1's entry and a2's old state
    assert "2 ledger entries of files gone from the source folders removed" in \
        [p for p in second["phases"] if p["name"] == "discover"][0]["note"]
    # a2's new state was planned; its backup already holds other bytes under that name, which are never
    # overwritten: a failed row, and no entry (it is planned again next run, and fails loudly again)
    assert second["outputs"]["discovered"]["planned"] == 1 and second["outputs"]["discovered"]["unchanged"] == 1
    a2 = [r for r in cf.manifest_rows(res, second) if r["file"] == "traffic_a2.csv"]
    assert len(a2) == 1 and a2[0]["status"] == "failed" and "a different file is already at" in a2[0]["error"]
    assert set(ledger(res, "alpha")) == {"traffic_a3.csv"}
    assert set(ledger(res, "gamma")) == {"traffic_g1.csv"}

    # gamma's folder back, empty (its file moved away after the backup): now its entry goes
    (src / "gamma").mkdir()
    third = run_until_collect(res)
    assert third["outputs"]["ledger_pruned"] == 1
    assert ledger(res, "gamma") == {} and set(ledger(res, "alpha")) == {"traffic_a3.csv"}
    assert third["outputs"]["discovered"]["planned"] == 1  # a2 again


def test_a_file_back_in_its_pruned_state_is_verified_not_rewritten(tree):
    """What pruning costs: a file that comes back exactly as it was is planned again and found present."""
    res, src = tree
    run_until_collect(res)
    kept = (src.parent / "a1.kept")
    (src / "alpha" / "traffic_a1.csv").rename(kept)
    assert run_until_collect(res)["outputs"]["ledger_pruned"] == 1
    kept.rename(src / "alpha" / "traffic_a1.csv")  # same bytes, same mtime
    rec = run_until_collect(res)
    rows = {r["file"]: r for r in cf.manifest_rows(res, rec) if r["customer"] == "alpha"}
    assert list(rows) == ["traffic_a1.csv"] and rows["traffic_a1.csv"]["status"] == "present"
    assert set(ledger(res, "alpha")) == {"traffic_a1.csv", "traffic_a2.csv", "traffic_a3.csv"}


def test_a_customer_folder_that_cannot_be_listed_keeps_its_entries(tree, monkeypatch):
    res, src = tree
    run_until_collect(res)
    (src / "alpha" / "traffic_a1.csv").unlink()
    from storage.local import LocalBackend

    listing = LocalBackend.list

    def refuse_alpha(self, path):
        if path.endswith("/alpha"):
            from base.errors import FatalError
            raise FatalError(f"list {path}: permission denied")
        return listing(self, path)
    monkeypatch.setattr(LocalBackend, "list", refuse_alpha)
    rec = run_until_collect(res)
    assert rec["outputs"]["ledger_pruned"] == 0
    assert set(ledger(res, "alpha")) == {"traffic_a1.csv", "traffic_a2.csv", "traffic_a3.csv"}


def test_with_two_source_folders_only_the_listed_folder_is_pruned(tree, tmp_path):
    """A customer's entries of one source folder stay while that folder is missing, even though the customer's
    folder in the other source was listed."""
    res, src = tree
    other = tmp_path / "src2"
    (other / "alpha").mkdir(parents=True)
    _write(other / "alpha" / "traffic_b1.csv", b"b1;1\n")
    config = yaml.safe_load((tmp_path / "cfg.yaml").read_text())
    config["customer_files"]["source_dirs"].append(str(other))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    res = Resources(load_settings(tmp_path / "cfg.yaml"), _redis=res.redis)
    run_until_collect(res)
    assert set(ledger(res, "alpha")) == {"traffic_a1.csv", "traffic_a2.csv", "traffic_a3.csv", "traffic_b1.csv"}
    (other / "alpha").rename(tmp_path / "alpha-away")  # the second source's folder vanished
    (src / "alpha" / "traffic_a1.csv").unlink()  # a file of the first one left
    assert run_until_collect(res)["outputs"]["ledger_pruned"] == 1
    assert set(ledger(res, "alpha")) == {"traffic_a2.csv", "traffic_a3.csv", "traffic_b1.csv"}


def test_a_rerun_with_nothing_gone_does_not_read_the_ledger_through(tree, monkeypatch):
    """The usual rerun pays one HLEN per customer, not a pass over a ledger of every file of the folders."""
    res, src = tree
    run_until_collect(res)

    def no_scan(*a, **k):
        raise AssertionError("the whole ledger was read though no file left")
    monkeypatch.setattr(res.redis, "hscan_iter", no_scan)
    rec = run_until_collect(res)
    assert rec["outputs"]["ledger_pruned"] == 0 and rec["outputs"]["discovered"]["unchanged"] == 4
    monkeypatch.undo()
    (src / "gamma" / "traffic_g1.csv").unlink()  # one file gone: now the pass runs, for gamma only
    scanned = []
    scan = res.redis.hscan_iter
    monkeypatch.setattr(res.redis, "hscan_iter", lambda name, **k: scanned.append(name) or scan(name, **k))
    assert run_until_collect(res)["outputs"]["ledger_pruned"] == 1
    assert [n.rsplit(":", 1)[-1] for n in scanned] == ["gamma"]
