"""The retry policy of every phase: a budget of time, not a count.

A phase that fails with a retryable error (``errors.RetryableError``) is tried
again until ``retry.budget`` seconds have passed since its first attempt
started, so the promise is a duration: an outage of a dependency shorter than
the budget minus one attempt's own duration is survived; a longer one fails the
job loudly, once.

Waits double from ``retry.backoff`` up to ``retry.backoff_max`` with *equal*
jitter (half of each wait fixed, half random): full jitter, Celery's default,
can draw three waits near zero and spend them in the first seconds of an
outage.  The last attempt is placed at the end of the budget, so the budget is
used whole.  ``retry.max_retries``, when set, caps the number of retries too.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from config.settings import RetrySettings


def next_retry(policy: RetrySettings, retries: int, elapsed: float,
               rand: Callable[[], float] = random.random) -> float | None:
    """Seconds to wait before attempt ``retries + 2``, or None when the budget (or the cap) is spent.

    ``retries``: retries already made; ``elapsed``: seconds since the first attempt started.
    """
    if policy.max_retries is not None and retries >= policy.max_retries:
        return None
    left = policy.budget - elapsed
    if left <= 0:
        return None
    full = min(policy.backoff * 2 ** retries, policy.backoff_max)
    wait = full / 2 + rand() * full / 2
    return min(wait, left)


def gave_up(policy: RetrySettings, retries: int, elapsed: float) -> str:
    """Why retrying stopped, for the final error message."""
    if policy.max_retries is not None and retries >= policy.max_retries:
        return f"gave up after {retries} retries (retry.max_retries)"
    return f"gave up after {elapsed:.0f}s of attempts (retry.budget {policy.budget}s)"
