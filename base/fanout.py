"""Running independent pieces of one operation side by side, and which failure to report."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence


def first_error(errors: Sequence[BaseException]) -> BaseException:
    """The error to raise for several parallel failures: the first fatal one, else the first.

    A fatal error (bad input, permission, a mismatch) must not hide behind a
    retryable one (a timeout in a sibling): retrying would fail the same way.
    """
    fatal = [e for e in errors if not getattr(e, "retryable", False)]
    return (fatal or list(errors))[0]


def run_threads(calls: Sequence[Callable[[], None]], name: str) -> None:
    """Run each call in its own thread, wait for all, then raise ``first_error`` of their failures.

    Every thread ends before this returns or raises, so no piece is still
    writing when the caller cleans up.
    """
    errors: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as e:  # collected and re-raised in the calling thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,), name=f"{name}-{i}", daemon=True) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise first_error(errors)
