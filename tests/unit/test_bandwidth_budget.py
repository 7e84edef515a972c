"""The shared bandwidth budget (backup/bandwidth.py) on the real Redis: one limit for every taker, none starves.

Each thread below has its own ``SharedBudget`` object, as separate worker processes would: all
they share is the Redis key.  Sending is simulated by the sleep the budget imposes (the real
uploads are in tests/integration/test_bandwidth.py).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from backup.bandwidth import SharedBudget

pytestmark = pytest.mark.clock  # rates and waits measured on the wall clock


def _takers(client, destination: str, rate_mbps: float, takers: int, each: int, chunk: int):
    """``takers`` threads each taking ``each`` bytes in ``chunk``-byte pieces: (per-taker (start, end), wall)."""
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * takers
    gate = threading.Barrier(takers)

    def run(i: int) -> None:
        budget = SharedBudget(client, "mbtest", destination, rate_mbps)
        gate.wait()
        t0 = time.monotonic()
        for _ in range(each // chunk):
            budget(chunk)
        spans[i] = (t0, time.monotonic())
    threads = [threading.Thread(target=run, args=(i,)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return spans


@pytest.mark.parametrize("takers", [1, 2, 4])
def test_concurrent_takers_share_one_limit_and_none_starves(redis_client, takers):
    rate, total, chunk = 4.0, 6_000_000, 100_000
    spans = _takers(redis_client, uuid.uuid4().hex, rate, takers, total // takers, chunk)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    # The last chunk of each taker is released at its slot's start: the bytes let through by then are
    # total - one chunk per taker's last slot at most.
    aggregate = (total - chunk) / wall / 1e6
    assert 0.9 * rate <= aggregate <= 1.1 * rate, aggregate
    fair = rate / takers
    for s, e in spans:
        assert (total // takers - chunk) / (e - s) / 1e6 >= fair / 3, (spans, fair)


def test_a_late_sender_makes_up_at_most_the_burst_and_a_first_take_has_no_credit(redis_client):
    budget = SharedBudget(redis_client, "mbtest", uuid.uuid4().hex, 1.0)  # 1 MB/s
    began = time.monotonic()
    assert budget.reserve(500_000) == 0.0  # the link is free: the first chunk goes now...
    # ...and the next one waits its turn (less the time between the two calls: CI once took 53 ms there)
    assert budget.reserve(500_000) == pytest.approx(0.5 - (time.monotonic() - began), abs=0.05)
    time.sleep(1.0 + SharedBudget.BURST + 0.2)  # idle (or late) longer than the burst
    assert budget.reserve(1_000_000) == 0.0
    # Only BURST seconds were made up: the next megabyte waits for what the first one left.
    assert budget.reserve(1_000_000) == pytest.approx(1.0 - SharedBudget.BURST, abs=0.05)


def test_the_budget_key_expires_after_use_and_a_zero_limit_is_refused(redis_client):
    dest = uuid.uuid4().hex
    SharedBudget(redis_client, "mbtest", dest, 10.0).reserve(1000)
    ttl = redis_client.pttl(f"mbtest:bandwidth:{dest}")
    assert 59_000 < ttl <= 61_000
    with pytest.raises(ValueError, match="positive rate"):
        SharedBudget(redis_client, "mbtest", dest, 0)
