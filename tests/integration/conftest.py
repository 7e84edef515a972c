"""Fixtures shared by integration modules, and the background scenarios (tests/background.py): started once the
session knows its tests, cancelled at its end."""

from __future__ import annotations

import pytest

from tests.background import backgrounds
from tests.helpers import new_sample_table


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    for bg in backgrounds(session.items):
        bg.start()


def pytest_sessionfinish(session):
    for bg in backgrounds(session.items):
        bg.cancel()


@pytest.fixture(scope="session")
def private_broker_table(platform, settings) -> str:
    """An 8000-row sample table for the tests whose runs keep their locks, alert episodes and job records on a
    Redis of their own (broker outage, retry budget): nothing of one such test is seen by another, so they
    share one table, created once (each one costs Spark ~15-40 s).  Those that look at the edge node give
    their runs a ``sftp.remote_dir`` of their own."""
    return new_sample_table(settings, "traffic_private_broker")
