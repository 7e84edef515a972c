"""Long, timer-bound scenarios that run in the background from the start of the session.

Some integration scenarios spend minutes waiting on a clock they cannot hurry
(celery beat fires at most once a minute) while using almost no CPU.  Such a
scenario is written as a plain function and attached to its test with
``@in_background(scenario)``: ``tests/integration/conftest.py`` starts it in a
thread as soon as the session has collected that test (only if it is
selected), so its waiting overlaps the tests that run before it; the test then
takes the scenario's result (or its exception, raised again) and makes its
assertions.  A scenario must be self-contained: its own Redis, workers and
processes, nothing of the session's fixtures (they do not exist yet when it
starts), and it stops whatever it started in a ``finally``.  One that needs the
local platform waits for the session's early start of it
(``tests.conftest.EarlyStart.take("platform")``; its test requests ``platform``
so that the session starts it).  It polls through
``Background.wait_until`` so that a session ending early cancels it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Cancelled(Exception):
    """The session ended before the scenario did."""


class Background:
    """One scenario, started at most once per session, run in a daemon thread."""

    def __init__(self, scenario: Callable[["Background"], Any]):
        self.scenario = scenario
        self.name = scenario.__name__
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None

    def start(self) -> "Background":
        """Start the scenario (idempotent)."""
        if self._thread is None:
            self.started_at = time.monotonic()
            self._thread = threading.Thread(target=self._run, name=f"background {self.name}", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._result = self.scenario(self)
        except BaseException as e:  # handed to the test, raised again there
            self._error = e
        finally:
            self.ended_at = time.monotonic()

    def wait_until(self, cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
        """Poll ``cond`` until truthy (its value is returned); AssertionError after ``timeout``; Cancelled if
        the session ends first."""
        deadline = time.monotonic() + timeout
        while True:
            if self._cancel.is_set():
                raise Cancelled(f"{self.name}: the session ended while waiting for {what}")
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {what} not within {timeout}s")
            time.sleep(interval)

    def result(self, timeout: float) -> Any:
        """Wait for the scenario (starting it if the session did not) and return its result or raise its error."""
        self.start()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"background scenario {self.name} still running after waiting {timeout}s more")
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self, timeout: float = 60) -> None:
        """End the session's interest: the scenario stops at its next poll and cleans up (waited for)."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)


def in_background(scenario: Callable[[Background], Any]):
    """Attach ``scenario`` to a test function; the test calls ``<test>.background.result(timeout)``."""
    def attach(test):
        test.background = Background(scenario)
        return test
    return attach


def backgrounds(items) -> list[Background]:
    """The distinct background scenarios of the collected test items."""
    found: dict[int, Background] = {}
    for item in items:
        bg = getattr(getattr(item, "function", None), "background", None)
        if isinstance(bg, Background):
            found[id(bg)] = bg
    return list(found.values())
