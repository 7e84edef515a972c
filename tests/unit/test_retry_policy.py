"""The retry budget (backup/retry.py): a duration, spread by equal jitter, used whole, capped when asked."""

from __future__ import annotations

import random

import pytest

from backup.retry import gave_up, next_retry
from config.settings import RetrySettings


def _schedule(policy: RetrySettings, attempt_seconds: float, rand) -> list[float]:
    """The start times of every attempt when each attempt fails after ``attempt_seconds``."""
    starts, t, retries = [0.0], 0.0, 0
    while True:
        t += attempt_seconds
        wait = next_retry(policy, retries, t, rand)
        if wait is None:
            return starts
        t += wait
        starts.append(t)
        retries += 1


@pytest.mark.parametrize("seed", range(20))
def test_the_last_attempt_lands_at_the_end_of_the_budget_whatever_the_jitter(seed):
    policy = RetrySettings(budget=600, backoff=2, backoff_max=60)
    starts = _schedule(policy, 1.0, random.Random(seed).random)
    # The last attempt starts within one attempt's length of the budget's end: an outage that ends
    # before then is survived.
    assert 599 <= starts[-1] <= 600


def test_equal_jitter_never_spends_early_retries_at_once():
    policy = RetrySettings(budget=600, backoff=2, backoff_max=60)
    starts = _schedule(policy, 0.0, lambda: 0.0)  # the unluckiest draws: every random half is zero
    assert starts[:5] == [0.0, 1.0, 3.0, 7.0, 15.0]  # waits of at least half the doubling backoff


def test_budget_spent_or_cap_reached_ends_retrying():
    policy = RetrySettings(budget=30, backoff=2, backoff_max=60)
    assert next_retry(policy, 3, 30.0) is None
    assert next_retry(policy, 3, 29.5, lambda: 1.0) == pytest.approx(0.5)  # one last try at the end
    capped = RetrySettings(budget=600, max_retries=2)
    assert next_retry(capped, 2, 1.0) is None
    assert gave_up(capped, 2, 1.0) == "gave up after 2 retries (retry.max_retries)"
    assert gave_up(policy, 3, 30.2) == "gave up after 30s of attempts (retry.budget 30s)"
