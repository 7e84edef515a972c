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


def test_an_archive_upload_and_a_customer_files_copy_to_the_same_host_share_its_budget(platform, settings, res,
                                                                                      tmp_path):
    """Two workflows, one backup server: the edge-export upload (``Resources.sftp()``) and a customer-files
    ``sftp://`` destination on the same host and port (``open_location`` with ``Resources.bandwidth_budget``)
    take from the same budget, so together they stay within the limit."""
    import os
    import posixpath
    import threading
    import time
    import uuid

    from backup.resources import Resources
    from config.settings import load_settings
    from connectors.sftp import upload
    from storage.locations import open_location
    from bench.faultkit import wait_until

    limit, mb = 2.0, 3.0
    r = Resources(load_settings(write_config(tmp_path / "c.yaml", {"sftp": {"rate_limit_mbps": limit}})),
                  _redis=res.redis)
    s = r.settings.sftp
    folder = posixpath.join(s.remote_dir, f"budget-{uuid.uuid4().hex[:8]}")
    backend, _ = open_location(r.settings, f"sftp://{r.sftp().user}@{s.host}:{s.port}{folder}", r.bandwidth_budget)
    assert backend._target.pace is not None, "the customer-files destination must take from the host's budget"
    backend.mkdir(folder)
    archive = tmp_path / "archive.bin"
    archive.write_bytes(os.urandom(int(mb * 1e6)))
    data = os.urandom(int(mb * 1e6))
    takes = []  # (asked, released, bytes) of every take, both workflows: when bytes were let through

    def recorded(budget):
        def take(n: int) -> None:
            t = time.monotonic()
            budget(n)
            takes.append((t, time.monotonic(), n))
        take.rate = budget.rate
        return take
    target = r.sftp()
    target.pace = recorded(target.pace)
    backend.set_pace(recorded(backend._target.pace))
    threads = [threading.Thread(target=upload, args=(target, archive, posixpath.join(folder, ".a.part"))),
               threading.Thread(target=backend.write_atomic, args=(
                   posixpath.join(folder, "cdr.csv"), [data[i:i + 2**20] for i in range(0, len(data), 2**20)]))]
    threads[0].start()
    wait_until(lambda: takes, 60, "the archive upload to start sending")  # the copy starts while it sends
    threads[1].start()
    for t in threads:
        t.join()
    assert sum(n for *_, n in takes) == 2 * int(mb * 1e6)
    span = max(released for _, released, _ in takes) - min(asked for asked, _, _ in takes)
    # Alone, each would be let through at the limit; sharing one budget, both together take twice as long.
    # (Separate budgets would give about 2x the limit here.)
    assert (2 * mb * 1e6 - max(n for *_, n in takes)) / span / 1e6 <= 1.1 * limit, span
    assert backend.sha256(posixpath.join(folder, "cdr.csv")) == __import__("hashlib").sha256(data).hexdigest()
