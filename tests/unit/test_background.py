"""tests/background.py: a background scenario hands its result or its error to its test, and stops when cancelled."""

from __future__ import annotations

import threading
import time

import pytest

from tests.background import Background, Cancelled, backgrounds, in_background


def test_the_result_and_the_error_of_a_scenario_reach_its_test():
    assert Background(lambda bg: 42).start().result(timeout=5) == 42

    def failing(bg):
        raise AssertionError("sent == 4")
    with pytest.raises(AssertionError, match="sent == 4"):
        Background(failing).result(timeout=5)  # started by result() if the session did not


def test_a_scenario_still_running_fails_its_test_instead_of_passing():
    release = threading.Event()
    bg = Background(lambda bg: release.wait(10)).start()
    with pytest.raises(AssertionError, match="still running"):
        bg.result(timeout=0.2)
    release.set()
    assert bg.result(timeout=5) is True


def test_wait_until_times_out_loudly_and_a_cancel_ends_the_scenario_at_its_next_poll():
    probe = Background(lambda bg: None)
    with pytest.raises(AssertionError, match="the thing not within 0.3s"):
        probe.wait_until(lambda: False, 0.3, "the thing")

    def never(bg):
        return bg.wait_until(lambda: False, 60, "a tick that never comes")
    bg = Background(never).start()
    began = time.monotonic()
    bg.cancel(timeout=5)
    assert time.monotonic() - began < 5
    with pytest.raises(Cancelled, match="a tick that never comes"):
        bg.result(timeout=1)


def test_each_scenario_is_found_once_among_the_collected_tests():
    def scenario(bg):
        return None

    @in_background(scenario)
    def test_a():
        pass

    class Item:
        def __init__(self, function):
            self.function = function
    found = backgrounds([Item(test_a), Item(test_a), Item(lambda: None), object()])
    assert [bg.scenario for bg in found] == [scenario]
