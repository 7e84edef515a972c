"""A server's error (HiveServer2 through impyla, Spark Connect) classified by its messages, never by its stack frames.

Found by the fault campaign's DataNode trials: a Spark stage failure reading a block whose only live replica was on a
stopped DataNode came back as ``AuthFailed`` (fatal: no retry, the run failed at once), because a frame of the stack
trace, ``org.apache.hadoop.security.authentication.util.SubjectUtil.doAs``, matched "authenticat".  The texts below
are shortened from the Spark JVM's log of that trial.
"""

from __future__ import annotations

import pytest
from impala.error import HiveServer2Error
from pyspark.errors.exceptions.connect import SparkException

from base.errors import AuthFailed, ConnectionFailed, FatalError, NotFound, without_stack_frames
from base.identifiers import TableName
from connectors.hive import _classify
from connectors.spark import classify_spark

FRAMES = ("\tat org.apache.spark.sql.execution.datasources.FileScanRDD$$anon$1.hasNext(FileScanRDD.scala:153)\n"
          "\tat org.apache.hadoop.security.authentication.util.SubjectUtil.doAs(SubjectUtil.java:328)\n"
          "\tat java.base/java.lang.Thread.run(Thread.java:840)\n"
          "\t... 3 more\n")
READ_FAILED = ("Error running query: org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage "
               "68.0 failed 1 times: org.apache.spark.SparkException: [FAILED_READ_FILE.NO_HINT] Encountered error "
               "while reading file hdfs://127.0.0.1:8520/user/hive/warehouse/db.db/t/part-00000.snappy.parquet.  "
               "SQLSTATE: KD001\n" + FRAMES)
BLOCK_MISSING = ("Caused by: org.apache.hadoop.hdfs.BlockMissingException: Could not obtain block: "
                 "BP-1-127.0.0.1-1:blk_1073741892_1068 file=/user/hive/warehouse/db.db/t/part-00000.snappy.parquet "
                 "No live nodes contain current block\n" + FRAMES)
NAMENODE_DOWN = ("Caused by: java.net.ConnectException: Call From host/127.0.0.1 to 127.0.0.1:8520 failed on connection "
                 "exception: java.net.ConnectException: Connection refused\n" + FRAMES)
DENIED = ("Caused by: org.apache.hadoop.security.AccessControlException: Permission denied: user=backup, access=WRITE, "
          "inode=\"/user/hive/warehouse/db.db\":hive:supergroup:drwxr-xr-x\n" + FRAMES)


@pytest.mark.parametrize("text, family", [
    (READ_FAILED + BLOCK_MISSING, ConnectionFailed),  # was AuthFailed: "authenticat" in a frame
    (READ_FAILED + NAMENODE_DOWN, ConnectionFailed),
    (READ_FAILED, FatalError),  # the frames alone decide nothing: not AuthFailed
    (READ_FAILED + DENIED, AuthFailed),
    ("Error running query: [TABLE_OR_VIEW_NOT_FOUND] The table or view `db`.`t` cannot be found.\n" + FRAMES, NotFound),
])
def test_a_hiveserver2_error_is_classified_by_its_messages_and_causes(text, family):
    err = _classify(HiveServer2Error(text), "load counts")
    assert type(err) is family, err
    assert err.one_line().startswith(f"{family.__name__}: load counts: ") and "\tat " not in err.one_line()


def test_a_spark_connect_error_is_transient_when_its_server_side_cause_is():
    """The Connect client keeps the server's "Caused by" lines in the stack trace it fetched with the error."""
    read_failed = "[FAILED_READ_FILE.NO_HINT] Encountered error while reading file hdfs://127.0.0.1:8520/x.parquet."
    missing = SparkException(message=read_failed, errorClass="FAILED_READ_FILE.NO_HINT",
                             server_stacktrace="org.apache.spark.SparkException\n" + FRAMES + BLOCK_MISSING)
    assert type(classify_spark(missing, "write the backup")) is ConnectionFailed
    corrupt = SparkException(message=read_failed, errorClass="FAILED_READ_FILE.NO_HINT",
                             server_stacktrace="org.apache.spark.SparkException\n" + FRAMES +
                             "Caused by: java.io.IOException: can not read class org.apache.parquet.format.PageHeader\n")
    assert type(classify_spark(corrupt, "write the backup")) is FatalError


def test_stack_frames_are_removed_and_messages_kept():
    kept = without_stack_frames(READ_FAILED + BLOCK_MISSING).splitlines()
    assert len(kept) == 2 and kept[1].startswith("Caused by: org.apache.hadoop.hdfs.BlockMissingException")


class _RacingHiveServer2:
    """A HiveServer2 speaking impyla's own Thrift protocol (NOSASL), whose failed statements show the Spark Thrift
    server's race: the operation's state is ERROR ``lag`` status reads before its error message is recorded; meanwhile
    the result's schema is refused with "Expected state FINISHED, but found ERROR", as the real server does.

    A stand-in on purpose: on the real server the window lasts microseconds and opens only under load (it failed one
    run of a fresh clone like CI); here every statement falls in it.  ``SELECT version()`` fails with its message at
    once (the client then takes the engine for Hive)."""

    def __init__(self, message: str, lag: int):
        import socket
        import threading

        from impala._thrift_gen.TCLIService import TCLIService, ttypes as t

        self.t, self.message, self.lag = t, message, lag
        self.status_reads: dict[bytes, int] = {}
        self.statements: dict[bytes, str] = {}
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.processor = TCLIService.Processor(self)
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        from thrift.protocol import TBinaryProtocol
        from thrift.transport import TSocket, TTransport

        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            sock = TSocket.TSocket()
            sock.setHandle(conn)
            transport = TTransport.TBufferedTransport(sock)
            protocol = TBinaryProtocol.TBinaryProtocol(transport)

            def serve_one(transport=transport, protocol=protocol):
                try:
                    while True:
                        self.processor.process(protocol, protocol)
                except (TTransport.TTransportException, OSError, EOFError):
                    transport.close()
            threading.Thread(target=serve_one, daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()

    def _ok(self):
        return self.t.TStatus(statusCode=self.t.TStatusCode.SUCCESS_STATUS)

    def _error(self, message: str):
        return self.t.TStatus(statusCode=self.t.TStatusCode.ERROR_STATUS, errorMessage=message)

    def OpenSession(self, req):
        t = self.t
        return t.TOpenSessionResp(status=self._ok(), serverProtocolVersion=req.client_protocol,
                                  sessionHandle=t.TSessionHandle(t.THandleIdentifier(b"s" * 16, b"s" * 16)),
                                  configuration={})

    def CloseSession(self, req):
        return self.t.TCloseSessionResp(status=self._ok())

    def ExecuteStatement(self, req):
        t = self.t
        guid = len(self.statements).to_bytes(16, "big")
        self.statements[guid] = req.statement
        self.status_reads[guid] = 0
        handle = t.TOperationHandle(t.THandleIdentifier(guid, b"o" * 16), t.TOperationType.EXECUTE_STATEMENT,
                                    hasResultSet=True)
        return t.TExecuteStatementResp(status=self._ok(), operationHandle=handle)

    def GetOperationStatus(self, req):
        t = self.t
        guid = req.operationHandle.operationId.guid
        self.status_reads[guid] += 1
        if self.statements[guid] == "SELECT version()":
            message = "version() is not a function here"
        else:
            message = self.message if self.status_reads[guid] > self.lag else None
        return t.TGetOperationStatusResp(status=self._ok(), operationState=t.TOperationState.ERROR_STATE,
                                         errorMessage=message, hasResultSet=True)

    def GetResultSetMetadata(self, req):
        return self.t.TGetResultSetMetadataResp(status=self._error("Expected state FINISHED, but found ERROR"))

    def FetchResults(self, req):
        return self.t.TFetchResultsResp(status=self._error("Expected state FINISHED, but found ERROR"))

    def CloseOperation(self, req):
        return self.t.TCloseOperationResp(status=self._ok())

    def GetLog(self, req):
        return self.t.TGetLogResp(status=self._ok(), log="")


@pytest.fixture
def racing_server(request):
    server = _RacingHiveServer2(*request.param)
    yield server
    server.stop()


NOT_FOUND = "Error running query: [TABLE_OR_VIEW_NOT_FOUND] The table or view `db`.`t` cannot be found.\n" + FRAMES


@pytest.mark.parametrize("racing_server", [(NOT_FOUND, 1), (NOT_FOUND, 4)], indirect=True)
def test_a_failed_statement_whose_message_comes_late_is_classified_by_that_message(racing_server):
    """A missing table is NotFound (the count tables are then created), not "Expected state FINISHED, but found
    ERROR" as a FatalError that fails a good run: the client reads the operation's status again for the message."""
    from config.settings import HiveSettings
    from connectors.hive import HiveClient

    with HiveClient(HiveSettings(host="127.0.0.1", port=racing_server.port, auth_mechanism="NOSASL")) as hive:
        with pytest.raises(NotFound) as raised:
            hive.columns(TableName.parse("db.t"))
    assert raised.value.one_line() == ("NotFound: describe db.t: [TABLE_OR_VIEW_NOT_FOUND] The table or view `db`.`t` "
                                       "cannot be found.")
    assert max(racing_server.status_reads.values()) == racing_server.lag + 1


@pytest.mark.parametrize("racing_server", [(None, 10**9)], indirect=True)
def test_a_server_that_never_records_the_message_gives_what_impyla_got_after_a_bounded_wait(racing_server):
    from config.settings import HiveSettings
    from connectors import hive as hive_module

    with hive_module.HiveClient(HiveSettings(host="127.0.0.1", port=racing_server.port,
                                             auth_mechanism="NOSASL")) as hive:
        with hive._cursor("describe db.t") as cur:
            with pytest.raises(Exception) as impyla_error:
                cur.execute("SELECT * FROM `db`.`t` LIMIT 0")
            reads = max(racing_server.status_reads.values())
            kept = hive_module._with_server_message(cur, impyla_error.value, wait=0.3)
    assert kept is impyla_error.value and "Expected state FINISHED, but found ERROR" in str(kept)
    assert max(racing_server.status_reads.values()) > reads  # it did ask again, then gave up
