"""Spark through Spark Connect: the one place that opens Spark sessions and maps Spark errors.

A session is opened on use, in the process that uses it (a Celery worker's
child, after the fork), never at import: a gRPC channel does not survive a
fork.  Every phase opens its own session and releases it on the server when it
ends, so no Spark state leaks from one phase to the next (which may run in
another worker).  pyspark is imported inside the functions for the same reason
and to keep the CLI fast.

The DataFrame code of the workflows uses only the API that classic PySpark and
Spark Connect share, so a ``spark-submit`` driver runs it unchanged: with
``spark.remote`` set to a master instead of an ``sc://`` URL, every Spark phase
runs in a driver of its own (backup/spark_submit.py), where ``DriverSpark``
hands the phase the driver's classic session.  docs/table-backup.md says why
Connect is the main path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from base.errors import BackupError, ConnectionFailed, FatalError, NotFound, classify, server_side_transient
from base.identifiers import TableName
from config.settings import Settings, SparkSettings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


T = TypeVar("T")

_NOT_FOUND = {"TABLE_OR_VIEW_NOT_FOUND", "PATH_NOT_FOUND", "SCHEMA_NOT_FOUND", "VIEW_NOT_FOUND"}
# A session the server forgot (server restarted, session expired): a new session on retry works.
_SESSION_GONE_PREFIXES = ("INVALID_HANDLE",)
_TRANSIENT_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"}


def _grpc_code(exc: BaseException) -> str | None:
    """The gRPC status name somewhere in the exception chain, if any."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "code", None)
        if callable(code):
            try:
                return code().name
            except Exception:  # not a grpc.RpcError after all
                pass
        e = e.__cause__ or e.__context__
    return None


def _condition(exc: BaseException) -> str:
    getter = getattr(exc, "getCondition", None)
    try:
        return (getter() if getter else None) or ""
    except Exception:
        return ""


def _server_text(exc: BaseException) -> str:
    """The error's message and the server's stack trace with its "Caused by" lines (the Connect client fetches them
    with the error's details): the cause is where an HDFS block that cannot be read says so."""
    trace = getattr(exc, "getStackTrace", None)
    try:
        extra = trace() if callable(trace) else None
    except Exception:  # noqa: BLE001 - a Py4J-style error without the Connect client's details
        extra = None
    return f"{exc}\n{extra or ''}"


def server_message(exc: BaseException) -> str:
    """The first line of a Spark error, without the JVM stack trace."""
    text = str(exc).split("\n\nJVM stacktrace:", 1)[0].split("\n== ", 1)[0]
    return " ".join(text.split())[:400] or type(exc).__name__


def classify_spark(exc: BaseException, what: str) -> BackupError:
    """Map a pyspark/gRPC exception to one of our families, naming ``what`` failed."""
    if isinstance(exc, BackupError):
        return exc
    from pyspark.errors import PySparkException

    condition = _condition(exc)
    if condition in _NOT_FOUND:
        return NotFound(f"{what}: {server_message(exc)}")
    if (condition.startswith(_SESSION_GONE_PREFIXES) or _grpc_code(exc) in _TRANSIENT_GRPC
            or server_side_transient(_server_text(exc))):  # e.g. FAILED_READ_FILE of a block on a DataNode down
        return ConnectionFailed(f"{what}: {server_message(exc)}")
    if isinstance(exc, PySparkException):
        return FatalError(f"{what}: {server_message(exc)}")
    return classify(exc, what)


@contextmanager
def spark_errors(what: str) -> Iterator[None]:
    """Re-raise anything Spark raises inside the block as one of our errors, cause kept."""
    try:
        yield
    except BackupError:
        raise
    except Exception as e:
        raise classify_spark(e, what) from e


class _InProcess:
    """Phases and calls that run in this process, on sessions from ``session()``."""

    def run_phase(self, func: Callable[[Any], dict], ctx: Any) -> dict:
        """Run a phase function on this process's sessions (the caller's phase context is passed through)."""
        return func(ctx)

    def run(self, func: Callable[..., T], res: Any, *args) -> T:
        """Run ``func(res, *args)`` on this process's sessions (``res``: the caller's resources, passed through)."""
        return func(res, *args)


class SparkConnect(_InProcess):
    """Spark Connect sessions built from settings."""

    def __init__(self, settings: SparkSettings):
        self.settings = settings

    @classmethod
    def from_settings(cls, s: Settings) -> "SparkConnect":
        """Build from the full settings (a token, if any, comes from SPARK_CONNECT_AUTHENTICATE_TOKEN)."""
        return cls(s.spark)

    @contextmanager
    def session(self) -> Iterator["SparkSession"]:
        """A new session on the Connect server, released when the block ends."""
        from pyspark.sql import SparkSession
        from pyspark.sql.connect.client.retries import DefaultPolicy

        with spark_errors(f"connect to Spark at {self.settings.remote}"):
            # No builder options: the builder would send them with the client's default retry policy.
            spark = SparkSession.builder.remote(self.settings.remote).create()
        try:
            # The client alone would retry an unreachable server for ~10 minutes; fail sooner and let
            # the phase's retry policy (backoff, attempts on the job record) take over.
            spark.client.set_retry_policies([DefaultPolicy(max_retries=self.settings.client_retries,
                                                           initial_backoff=200, max_backoff=5000)])
            with spark_errors(f"Spark at {self.settings.remote}"):  # backstop: nothing leaves unclassified
                for key, value in self.settings.session_conf.items():
                    spark.conf.set(key, value)
                yield spark
        finally:
            spark.stop()


class DriverSpark(_InProcess):
    """The classic session of a spark-submit driver (workers/spark_driver.py), handed to phases as Connect's are."""

    def __init__(self, spark: "SparkSession", settings: SparkSettings):
        self.spark = spark
        self.settings = settings

    @contextmanager
    def session(self) -> Iterator["SparkSession"]:
        """The driver's session (the driver stops it when its phase ends)."""
        with spark_errors("Spark driver"):
            for key, value in self.settings.session_conf.items():
                self.spark.conf.set(key, value)
            yield self.spark


def concurrently(*calls: Callable[[], T]) -> list[T]:
    """Run independent Spark calls of one session side by side; results in order, the first error raised.

    Each catalog lookup or small job is a round trip of 0.1-0.5 s that mostly waits on the
    server; the Connect client is safe to share between threads (its per-thread state is
    thread-local), so independent ones overlap instead of adding up.
    """
    if len(calls) <= 1:
        return [c() for c in calls]
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="spark-call") as pool:
        futures = [pool.submit(c) for c in calls]
    return [f.result() for f in futures]  # all have ended: leaving the block waited for them


# -- catalog helpers (names are validated TableName objects: backquoted, never user text) ---------

def table_kind(spark: "SparkSession", name: TableName) -> str | None:
    """'VIEW', 'MANAGED', 'EXTERNAL' ... or None if nothing has that name."""
    with spark_errors(f"look up {name}"):
        if not spark.catalog.tableExists(f"{name.db}.{name.table}"):
            return None
        return spark.catalog.getTable(f"{name.db}.{name.table}").tableType


def table_properties(spark: "SparkSession", name: TableName) -> dict[str, str]:
    """TBLPROPERTIES of a table or view."""
    with spark_errors(f"read properties of {name}"):
        return {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES {name.sql}").collect()}


def properties_if_exists(spark: "SparkSession", name: TableName) -> dict[str, str] | None:
    """TBLPROPERTIES of a table or view, or None if nothing has that name (one round trip either way)."""
    try:
        return table_properties(spark, name)
    except NotFound:
        return None


def tables_like(spark: "SparkSession", db: str, like: str) -> dict[str, dict]:
    """Tables and views of ``db`` matching a SHOW TABLES pattern, with their type and TBLPROPERTIES, in one round trip.

    ``{name (lower case): {"type": "VIEW" | "MANAGED" | ..., "properties": {key: value}, "view_text": sql,
    "information": the whole text}}``, read from ``SHOW TABLE EXTENDED``: one metastore batch instead
    of one SHOW TBLPROPERTIES per name.
    """
    if not re.fullmatch(r"[A-Za-z0-9_*|]+", like):
        raise ValueError(f"unsafe SHOW TABLES pattern {like!r}")
    with spark_errors(f"list tables of {db} like {like}"):
        rows = spark.sql(f"SHOW TABLE EXTENDED IN `{db}` LIKE '{like}'").select("tableName", "information").collect()
    return {r["tableName"].lower(): {**parse_table_information(r["information"]), "information": r["information"]}
            for r in rows}


_INFO_KEY = re.compile(r"^[A-Z][A-Za-z ]*: ")


def parse_table_information(text: str) -> dict:
    """Type, properties and a view's SQL (``view_text``, '' for a table) from the ``information`` text of
    SHOW TABLE EXTENDED (``Key: value`` lines)."""
    fields: dict[str, str] = {}
    view_text: list[str] = []
    in_view_text = False
    # The SQL may run over several lines: up to "View Original Text", which Spark prints next, or
    # without it up to the next "Key: " line.
    original_follows = "\nView Original Text: " in text
    for line in text.splitlines():
        if line.startswith("View Text: "):
            in_view_text = True
            view_text.append(line[len("View Text: "):])
            continue
        if in_view_text:
            if not (line.startswith("View Original Text: ") if original_follows else _INFO_KEY.match(line)):
                view_text.append(line)
                continue
            in_view_text = False
        if ": " in line and not line.startswith(" "):  # the first of a key counts (a view's SQL text comes later)
            key, value = line.split(": ", 1)
            fields.setdefault(key, value)
    inner = fields.get("Table Properties", "[]").strip()[1:-1]
    # "k1=v1, k2=v2": split only where a new key starts, so a value holding ", " stays whole.
    pairs = [p.split("=", 1) for p in re.split(r", (?=[\w.:\-]+=)", inner) if "=" in p]
    return {"type": fields.get("Type", "").strip().upper(), "properties": {k: v for k, v in pairs},
            "view_text": "\n".join(view_text)}


def drop(spark: "SparkSession", name: TableName, kind: str) -> None:
    """DROP VIEW/TABLE IF EXISTS."""
    stmt = "VIEW" if kind == "VIEW" else "TABLE"
    with spark_errors(f"drop {stmt.lower()} {name}"):
        spark.sql(f"DROP {stmt} IF EXISTS {name.sql}")
