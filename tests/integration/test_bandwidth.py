"""One bandwidth budget per backup server, shared by uploads in several worker processes (real uploads to sshd).

Four uploads from two processes (two threads each, every upload built as a worker builds it:
``Resources.sftp()``) start at one instant under ``sftp.rate_limit_mbps``; the aggregate must stay
within ±10 % of the limit and every upload must get at least a third of its fair share.
``bench/bandwidth.py`` measures 1, 2 and 4 concurrent uploads the same way.
"""

from __future__ import annotations

import pytest

from bench.bandwidth import measure
from tests.conftest import STATE, write_config

pytestmark = pytest.mark.integration


def test_four_uploads_from_two_processes_share_one_budget(platform, settings):
    limit = 4.0
    config = write_config(STATE / "bandwidth.yaml", {"sftp": {"rate_limit_mbps": limit}})
    row = measure(str(config), limit, concurrency=4, processes=2, mb=limit * 3 / 4)
    assert row["processes"] == 2 and len(row["upload_mb_per_s"]) == 4, row
    assert 0.9 <= row["aggregate_vs_limit"] <= 1.1, row
    assert row["slowest_vs_fair_share"] >= 1 / 3, row
