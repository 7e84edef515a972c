"""Background scenarios (tests/background.py): started once the session knows its tests, cancelled at its end."""

from __future__ import annotations

from tests.background import backgrounds


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    for bg in backgrounds(session.items):
        bg.start()


def pytest_sessionfinish(session):
    for bg in backgrounds(session.items):
        bg.cancel()
