"""customer-files' manifest rows (what the manifest CSV and the Hive count tables get) never repeat a URL password,
and change nothing else: a destination's URI and a server's error text are redacted, names are kept as they are.

The phases lock → discover → copy run in this process on local folders (``test_ledger_pruning``'s tree), against the
session's Redis; the results are then given the texts a failing server would have written.
"""

from __future__ import annotations

from backup import customer_files as cf
from backup.customer_files.ledger import _key, load_results, save_results
from tests.unit.test_ledger_pruning import run_until_collect, tree  # noqa: F401 (the fixture)


def test_uris_and_errors_are_redacted_and_names_kept(tree):
    res, _ = tree
    rec = run_until_collect(res)
    job = rec["job_id"]
    results = load_results(res, job, "alpha")
    keys = sorted(results)
    failed = dict(results[keys[0]], status="failed", file="odd:name@host.csv",
                  error="secondary: ConnectionFailed: sftp://bkp:s3cret@edge:22/b refused",
                  secondary_uri="sftp://bkp:s3cret@edge:22/b/traffic/odd:name@host.csv")
    save_results(res, job, "alpha", {keys[0]: failed})
    res.redis.hdel(_key(res, "results", job, "alpha"), keys[1])  # its task never reached it
    res.redis.hset(_key(res, "errors", job), "alpha", "TooManyDeliveries: webhdfs://u:pw@nn:9870 kept dying")
    rows = {r["file"]: r for r in cf.manifest_rows(res, rec) if r["customer"] == "alpha"}
    odd = rows["odd:name@host.csv"]
    assert odd["error"] == "secondary: ConnectionFailed: sftp://bkp:***@edge:22/b refused"
    assert odd["secondary_uri"] == "sftp://bkp:***@edge:22/b/traffic/odd:name@host.csv"
    assert odd["sha256"] == results[keys[0]]["sha256"] and odd["primary_uri"] == results[keys[0]]["primary_uri"]
    unreached = next(r for r in rows.values() if r["status"] == "failed" and r is not odd)
    assert unreached["error"] == "not copied: TooManyDeliveries: webhdfs://u:***@nn:9870 kept dying"
    assert sum(r["status"] == "copied" for r in rows.values()) == len(keys) - 2
    assert "s3cret" not in repr(cf.manifest_rows(res, rec)) and ":pw@" not in repr(cf.manifest_rows(res, rec))
