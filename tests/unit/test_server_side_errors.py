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
