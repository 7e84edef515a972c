"""Spark Connect failures map to our error families (no server needed: a closed port is real enough)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from base.errors import ConnectionFailed
from base.identifiers import TableName
from config.settings import SparkSettings
from connectors.spark import SparkConnect, table_kind


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_retryable_and_fails_fast():
    connect = SparkConnect(SparkSettings(remote=f"sc://127.0.0.1:{_closed_port()}", client_retries=1))
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="Connection refused|failed to connect") as e:
        with connect.session() as spark:
            table_kind(spark, TableName("db", "t"))
    assert time.monotonic() - started < 30, "the client's own retries must not hold a phase for minutes"
    assert e.value.__cause__ is not None, "the client's exception is kept as the cause"
    assert e.value.retryable


def test_worker_import_loads_no_spark_client():
    """The worker imports the task modules before forking: no pyspark, no gRPC channel may exist by then."""
    code = ("import sys, workers.app as a; a.app.loader.import_default_modules(); "
            "import tasks.table_backup; print(sorted(m for m in ('pyspark', 'grpc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
