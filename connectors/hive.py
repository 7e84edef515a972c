"""HiveServer2 / Impala through impyla: the one place that talks to the SQL engine.

Only validated identifiers reach SQL text (``base.identifiers``); values are
literals built by ``sql_date`` and ``sql_value``, in sessions with variable
substitution off (``${…}`` in a value stays text).  Results are streamed column
batch by column batch (``fetchcbatch``), never fetched whole, as the server sent
them (``RawColumn``: no Python object made per value).  Small tables the
backup writes itself (counts, manifests) are made with ``create_or_check_table``
and filled with ``replace_rows``: rows as literals, a bounded number per statement.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from impala import dbapi
from impala._thrift_gen.TCLIService.ttypes import TGetOperationStatusReq
from impala.error import Error as ImpylaError, OperationalError
from thrift.transport.TTransport import TTransportException

from base.errors import (AuthFailed, ConfigError, ConnectionFailed, FatalError, NotFound, classify,
                         server_side_transient, without_stack_frames)
from base.identifiers import TableName
from base.text import CONTROL_CHARS
from config.settings import HiveSettings, Settings

log = logging.getLogger(__name__)

_NOT_FOUND = re.compile(r"TABLE_OR_VIEW_NOT_FOUND|Table or view not found|Could not resolve table|"
                        r"SCHEMA_NOT_FOUND|Database '.*' not found|does not exist", re.I)
_AUTH = re.compile(r"authenticat|Access denied|not authorized|permission", re.I)


class RawColumn(NamedTuple):
    """One column of one fetched batch as HiveServer2 sent it (impyla with both its conversions off)."""

    type: str  # type name as impyla reports it: 'BIGINT', 'STRING', 'TIMESTAMP', 'ARRAY', ...
    values: Sequence  # numbers and booleans as Python values, every other type as bytes; NULL slots hold filler
    nulls: bytes  # bitmap, least significant bit first, 1 = NULL; may be shorter than the column (zero bits)


def _raw_batches(cur) -> Iterator[list[RawColumn]]:
    """The batches of an executed cursor opened with both conversions off, until the result ends."""
    while True:
        batch = cur.fetchcbatch()
        if batch is None:
            return
        if len(batch) == 0:
            if not batch.expect_more_rows:
                return
            continue
        yield [RawColumn(c.data_type, c.values, c.nulls.tobytes()) for c in batch.columns]


def server_message(text: str) -> str:
    """The useful head of a server error: no Java wrapper prefix, no stack trace, one line."""
    text = text.split("\n\tat ", 1)[0].split("\n\n", 1)[0]
    text = re.sub(r"^(org\.apache\.hive\.service\.cli\.HiveSQLException: )?(Error running query: )?", "", text)
    return " ".join(text.split())[:400]


def _classify(e: BaseException, what: str):
    """Map impyla/thrift exceptions to our families."""
    text = str(e)
    if isinstance(e, (TTransportException, socket.error, EOFError, TimeoutError)):
        return ConnectionFailed(f"{what}: {' '.join(text.split()) or type(e).__name__}")
    if isinstance(e, ImpylaError):
        first = server_message(text)
        messages = without_stack_frames(text)  # "authenticat" is in a frame of nearly every Hadoop stack trace
        if server_side_transient(messages):
            return ConnectionFailed(f"{what}: {first}")
        if _NOT_FOUND.search(messages):
            return NotFound(f"{what}: {first}")
        if _AUTH.search(messages):
            return AuthFailed(f"{what}: {first}")
        return FatalError(f"{what}: {first}")
    return classify(e, what)


#: what impyla raises for a failed statement whose status carried no error message.  The Spark Thrift server sets an
#: operation's state to ERROR, then records why: a status read between the two has no message, and impyla then asks
#: for the result and gets the server's "Expected state FINISHED, but found ERROR" (or, for a statement without a
#: result, says "Operation is in ERROR_STATE").  Seen under load in a fresh clone run like CI: the DESCRIBE of a
#: missing count table came back as that, not as "not found", and a good run failed instead of creating the table.
_NO_MESSAGE = re.compile(r"Expected state FINISHED, but found ERROR|Operation is in ERROR_STATE")


def _with_server_message(cur, e: BaseException, wait: float = 10.0) -> BaseException:
    """``e``, or when it is impyla's error without the server's message (``_NO_MESSAGE``), the message the server
    records for the cursor's operation a moment later, read with ``GetOperationStatus`` (idempotent) until it is there
    or ``wait`` seconds have passed.  Cost: nothing for any other error; a few status calls for this one."""
    op = getattr(cur, "_last_operation", None)
    if op is None or not isinstance(e, ImpylaError) or not _NO_MESSAGE.search(str(e)):
        return e
    deadline, pause = time.monotonic() + wait, 0.05
    while True:
        try:
            status = op._rpc("GetOperationStatus", TGetOperationStatusReq(operationHandle=op.handle), True)
        except Exception:  # the session or the server gone: the error we have is all there is
            return e
        if status.errorMessage:
            return OperationalError(status.errorMessage)
        if time.monotonic() >= deadline:
            return e
        time.sleep(pause)
        pause = min(2 * pause, 1.0)


def _certificate_refusal(e: BaseException) -> str | None:
    """The verification failure inside a connection error (thrift keeps the ssl error as ``inner``), or None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e.verify_message or str(e)
        if "CERTIFICATE_VERIFY_FAILED" in str(e):
            return " ".join(str(e).split())
        e = getattr(e, "inner", None) or e.__cause__ or e.__context__
    return None


def sql_date(d: dt.date) -> str:
    """A date as a SQL string literal (only digits and dashes, never user text)."""
    return f"'{d.isoformat()}'"


def sql_value(value) -> str:
    """A value as a SQL literal: NULL, an integer, or a quoted string with \\ and ' escaped."""
    if value is None:
        return "NULL"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"no SQL literal for {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    text = CONTROL_CHARS.sub(" ", value)  # never in paths; error texts are one line already
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create_or_check_table(hive: "HiveClient", table: TableName, columns: Sequence[tuple[str, str]]) -> str:
    """Create a table with ``columns`` (name, SQL type; stored as Parquet) if it is missing, its database too;
    FatalError if it exists with other column names.  'created' or 'exists'."""
    try:
        found = hive.columns(table)
    except NotFound:
        hive.execute(f"CREATE DATABASE IF NOT EXISTS `{table.db}`", f"create database {table.db}")
        cols = ", ".join(f"`{name}` {kind}" for name, kind in columns)
        hive.execute(f"CREATE TABLE IF NOT EXISTS {table.sql} ({cols}) STORED AS PARQUET", f"create table {table}")
        return "created"
    expected = [name for name, _ in columns]
    if [c.lower() for c in found] != expected:
        raise FatalError(f"table {table} has columns {found}, expected {expected}")
    return "exists"


def replace_rows(hive: "HiveClient", table: TableName, rows: Sequence[Sequence], what: str,
                 per_statement: int = 5000) -> int:
    """Replace a table's content with ``rows`` (values in column order, as ``sql_value`` literals); the rows written.

    The first ``per_statement`` rows go in one ``INSERT OVERWRITE ... VALUES``, the rest by
    ``INSERT INTO`` of as many more: one statement for a usual load, a bounded statement size
    for a large one.  No rows: the table is left as it is.
    """
    values = ["(" + ", ".join(sql_value(v) for v in row) + ")" for row in rows]
    for start in range(0, len(values), per_statement):
        verb = "INSERT OVERWRITE TABLE" if start == 0 else "INSERT INTO TABLE"
        hive.execute(f"{verb} {table.sql} VALUES {', '.join(values[start:start + per_statement])}", what)
    return len(values)


class HiveSession:
    """Statements run one after the other in one server session (``HiveClient.session``)."""

    def __init__(self, cur) -> None:
        self._cur = cur

    def execute(self, sql: str, what: str) -> None:
        try:
            self._cur.execute(sql)
        except Exception as e:
            raise _classify(_with_server_message(self._cur, e), what) from e

    def query(self, sql: str, what: str) -> list[tuple]:
        try:
            self._cur.execute(sql)
            return [tuple(r) for r in self._cur.fetchall()] if self._cur.has_result_set else []
        except Exception as e:
            raise _classify(_with_server_message(self._cur, e), what) from e


class HiveClient:
    """A HiveServer2/Impala connection built from settings; close it when done."""

    def __init__(self, settings: HiveSettings, password: str | None = None):
        self.settings = settings
        what = f"connect to HiveServer2 {settings.host}:{settings.port}"
        # impyla verifies nothing with use_ssl alone: verify_cert=True checks the chain (ca_cert, else the
        # system CAs) and the host name; only the loudly named opt-out turns that off.
        verify = settings.use_ssl and not settings.insecure_skip_tls_verify
        if settings.use_ssl and not verify:
            log.warning("%s: TLS certificate NOT verified (hive.insecure_skip_tls_verify): the password and every "
                        "row can be read by anyone on the path", what)
        if settings.ca_cert is not None and not settings.ca_cert.is_file():
            raise ConfigError(f"hive.ca_cert: file not found: {settings.ca_cert}")
        try:
            self.conn = dbapi.connect(
                host=settings.host, port=settings.port, auth_mechanism=settings.auth_mechanism,
                user=settings.user, password=password, use_ssl=settings.use_ssl,
                ca_cert=str(settings.ca_cert) if settings.ca_cert else None, verify_cert=verify,
                kerberos_service_name=settings.kerberos_service_name, timeout=settings.timeout,
            )
        except Exception as e:
            refused = _certificate_refusal(e)
            if refused is not None:  # fatal: retrying meets the same certificate
                raise AuthFailed(f"{what}: TLS certificate refused ({refused})") from e
            raise _classify(e, what) from e
        self._engine: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> "HiveClient":
        """Build from the full settings, password from the environment."""
        pw = s.secret("BACKUP_HIVE_PASSWORD")
        hive = s.hive if s.hive.ca_cert is None else s.hive.model_copy(update={"ca_cert": s.path(s.hive.ca_cert)})
        return cls(hive, pw.get_secret_value() if pw else None)

    def close(self) -> None:
        """Close the connection, ignoring a connection already gone."""
        try:
            self.conn.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _session_conf(self) -> dict[str, str]:
        """The session settings of every cursor: variable substitution off.

        HiveServer2 and the Spark Thrift server replace ``${env:…}``, ``${system:…}``, ``${hiveconf:…}``
        even inside string literals, so a file name such as ``${env:BACKUP_HIVE_PASSWORD}.csv`` in a count
        table's row would store a server-side value.  Literals here are data, never templates.  Impala
        substitutes nothing on the server (and would refuse unknown session keys): nothing to set.
        """
        if self.engine() == "impala":
            return {}
        return {"set:hiveconf:hive.variable.substitute": "false",
                "set:hiveconf:spark.sql.variable.substitute": "false"}

    @contextmanager
    def _cursor(self, what: str, conf: bool = True, decode: bool = True):
        try:
            cur = self.conn.cursor(convert_types=False, convert_strings_to_unicode=decode,
                                   configuration=self._session_conf() if conf else None)
        except Exception as e:
            raise _classify(e, what) from e
        try:
            yield cur
        except Exception as e:
            raise _classify(_with_server_message(cur, e), what) from e
        finally:
            try:
                cur.close()
            except Exception:
                pass

    @contextmanager
    def session(self, what: str) -> Iterator["HiveSession"]:
        """One server session for several statements: what one statement sets up for the next (a temporary
        view, a ``SET``) lives only in the session that made it, and each ``execute``/``query`` opens its own."""
        with self._cursor(what) as cur:
            yield HiveSession(cur)

    def execute(self, sql: str, what: str = "query") -> None:
        """Run a statement that returns no rows we need."""
        with self._cursor(what) as cur:
            cur.execute(sql)

    def query(self, sql: str, what: str = "query") -> list[tuple]:
        """Run a small query and return its rows (for counts and metadata only)."""
        with self._cursor(what) as cur:
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()] if cur.has_result_set else []

    def columns(self, table: TableName) -> list[str]:
        """Column names of a table; NotFound if it does not exist."""
        return [name for name, _ in self.column_types(table)]

    def column_types(self, table: TableName) -> list[tuple[str, str]]:
        """(name, HiveServer2 type name such as ``BIGINT`` or ``DECIMAL``) of each column ``SELECT *`` returns, in
        that order; NotFound if the table does not exist.  One query that reads no rows."""
        with self._cursor(f"describe {table}") as cur:
            cur.execute(f"SELECT * FROM {table.sql} LIMIT 0")
            return [(d[0].split(".")[-1], str(d[1])) for d in cur.description]

    def stream_raw_columns(self, sql: str, what: str, prefetch: int = 1) -> Iterator[list[RawColumn]]:
        """Yield result batches as the server sent them: per column its type name, values (text types as
        UTF-8 bytes, numbers as Python numbers, NULL slots holding filler) and NULL bitmap.

        No Python work per value here (impyla's decoding and conversions are off): what the bytes
        mean is for the consumer (``backup.archive.format_batch``).  With ``prefetch`` > 0 a thread
        fetches up to that many batches ahead, so the server prepares the next batch while the
        consumer handles this one (the protocol asks for one batch at a time: without it, server
        and client take turns).  Only that thread uses the cursor until it has ended; an error
        there is raised here, classified as every other, once the batches before it are consumed.
        """
        with self._cursor(what, decode=False) as cur:
            cur.arraysize = self.settings.fetch_rows
            cur.execute(sql)
            if prefetch <= 0:
                yield from _raw_batches(cur)
                return
            ahead: queue.Queue = queue.Queue(maxsize=prefetch)
            stop = threading.Event()
            end = object()

            def fetch() -> None:
                try:
                    for batch in _raw_batches(cur):
                        while not stop.is_set():
                            try:
                                ahead.put(batch, timeout=0.5)
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
                    ahead.put(end)
                except BaseException as e:  # raised by the consumer's side below
                    ahead.put(e)

            fetcher = threading.Thread(target=fetch, name=f"fetch {what}"[:60], daemon=True)
            fetcher.start()
            try:
                while (item := ahead.get()) is not end:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                stop.set()  # the consumer stopped early (or failed): the fetcher ends after its current fetch
                while fetcher.is_alive():
                    try:
                        ahead.get(timeout=0.5)
                    except queue.Empty:
                        pass
                fetcher.join()

    def engine(self) -> str:
        """'impala' or 'spark'/'hive', detected from the server once."""
        if self._engine is None:
            try:
                with self._cursor("detect engine", conf=False) as cur:  # no user text: no settings needed
                    cur.execute("SELECT version()")
                    rows = cur.fetchall()
                v = str(rows[0][0]).lower() if rows else ""
            except FatalError:
                v = ""
            self._engine = "impala" if "impala" in v else ("spark" if v else "hive")
        return self._engine

    def refresh(self, table: TableName) -> str:
        """Refresh a table's metadata with the engine's own statement."""
        stmt = {"impala": f"REFRESH {table.sql}", "spark": f"REFRESH TABLE {table.sql}"}.get(self.engine())
        if stmt is None:
            return "skipped (engine has no REFRESH)"
        self.execute(stmt, f"refresh {table}")
        return stmt
