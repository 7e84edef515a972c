"""The counters a finished job adds (backup/metrics.job_counts): never an error for a workflow's own outputs."""

from __future__ import annotations

from backup.metrics import job_counts


def test_counts_of_each_output_shape():
    assert job_counts({"outputs": {"rows": 5, "bytes": 10, "remote_uri": "sftp://x"}}) == {"rows": 5, "files": 1,
                                                                                            "bytes": 10}
    assert job_counts({"outputs": {"files": 3, "bytes": 7}}) == {"rows": 0, "files": 3, "bytes": 7}
    # restore-customer-files lists its files: counted, not an error in its finish phase
    assert job_counts({"outputs": {"files": [{"file": "a"}, {"file": "b"}]}}) == {"rows": 0, "files": 2, "bytes": 0}
