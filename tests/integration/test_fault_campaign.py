"""One trial of each fault kind of the campaign (bench/faults.py), so CI keeps every kind alive.

``make faults`` runs the full campaign (20 trials a kind, outages up to 90 s);
here each kind runs once with outages of at most 15 s, and its row must meet
the campaign's targets: nothing lost, duplicated or half-written, one alert per
failed episode and none for a recovered run.  One restore trial, one trial of each HDFS kind (a DataNode or
the NameNode stopped under customer-files with acme's primary on HDFS), the YARN kind, the Spark JVM
restart and the kinds of ``IN_FAULT_TRIALS`` run with the HDFS scenarios in ``make fault-trials`` (marker ``faults``; ``.ci/run`` runs it after
``make test``, and ``make faults`` before its campaign): each costs minutes, more than ``make test`` has to spare.
"""

from __future__ import annotations

import json
import time

import pytest

from bench.faults import HDFS_KINDS, KINDS, YARN_KINDS, Campaign, meets_targets, summarize
from tests.conftest import PORT_OFFSET, STATE, TEST_CONFIG

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def campaign(platform):
    with Campaign(dict(TEST_CONFIG), STATE / "faults", 6660 + PORT_OFFSET, seed=7, max_outage=15,
                  sparse_dates=True) as c:
        yield c


#: kinds whose one trial runs in ``make fault-trials`` (marker ``faults``), not ``make test``: their waits (an outage
#: or a pause outlasting the lock's TTL, 16-27 s each) put ``make test`` at its 25 minutes (CI of b81aa54: 25 m 00 s);
#: worker_kill (68-76 s: a redelivery after the visibility timeout) followed, as make test went over (CI of fea41ad);
#: make test keeps a worker killed mid-transfer in test_edge_export.py
IN_FAULT_TRIALS = ("sshd_outage", "black_hole", "paused", "worker_kill")


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.faults) if k in IN_FAULT_TRIALS else k
                                  for k in KINDS])
def test_one_trial_meets_the_targets(campaign, kind):
    row = summarize(kind, [campaign.trial(kind)])
    assert meets_targets(row), json.dumps(row)


@pytest.mark.faults  # about 2 minutes (a campaign of its own: an edge-export and a restore): make fault-trials
def test_one_restore_trial_meets_the_targets(platform):
    """The restores' rows stay alive with one trial of one kind (each restore trial costs Spark runs): the whole
    worker SIGKILLed at a random moment of a restore-edge-export, the restore that crosses the most systems (the
    edge node, a local staging folder, Spark); it restores the archive of the edge-export flow's first run."""
    with Campaign(dict(TEST_CONFIG), STATE / "faults-restore", 6670 + PORT_OFFSET, seed=7, max_outage=15,
                  sparse_dates=True, workflows=("restore-edge-export",)) as campaign:
        row = summarize("worker_kill", [campaign.trial("worker_kill")], "restore-edge-export")
    assert meets_targets(row), json.dumps(row)


@pytest.mark.faults  # customer-files on the session's HDFS, a campaign of its own (about a minute): make fault-trials
@pytest.mark.parametrize("kind", HDFS_KINDS)
def test_one_hdfs_trial_meets_the_targets(platform, kind):
    """A DataNode or the NameNode stopped (5-15 s) at a random moment of a customer-files run whose acme primary is
    on the session's HDFS: every file at both destinations once with its source's SHA-256 (acme's HDFS copies read
    back over WebHDFS), each once in the count table, one alert if the run failed, none if it recovered."""
    with Campaign(dict(TEST_CONFIG), STATE / f"faults-{kind}", 6680 + PORT_OFFSET, seed=7, max_outage=15,
                  sparse_dates=True, workflows=("customer-files",), hdfs=True) as campaign:
        assert campaign.flow.hdfs_dir and "hdfs://" in campaign.settings.customer_files.customers["acme"].primary
        row = summarize(kind, [campaign.trial(kind)], "customer-files")
        # the check read acme's copies on HDFS: every acme file of the calibration run and the trial, no other
        on_hdfs = campaign.flow.destination("acme", "primary")
        assert set(on_hdfs) == {k for k in campaign.flow.expected() if k[0] == "acme"} and len(on_hdfs) >= 12
    assert meets_targets(row), json.dumps(row)


@pytest.mark.faults  # table-backup on YARN: every phase a spark-submit application (minutes a run): make fault-trials
@pytest.mark.parametrize("kind", YARN_KINDS)
def test_one_yarn_trial_meets_the_targets(yarn_cluster, kind):
    """A running YARN application of a table-backup run (spark-submit, cluster mode) killed through the
    ResourceManager at a random moment: the backup holds the rows of the last successful run's source, no half
    table, no lock, one alert if the run failed; and an application was in fact killed."""
    with Campaign(dict(TEST_CONFIG), STATE / f"faults-{kind}", 6690 + PORT_OFFSET, seed=7, max_outage=15,
                  sparse_dates=True, workflows=("table-backup",), yarn=True) as campaign:
        began_ms = time.time() * 1000
        verdict = campaign.trial(kind)
        killed = [a for a in campaign.yarn_apps("KILLED") if a["startedTime"] >= began_ms]  # this trial's
        row = summarize(kind, [verdict], "table-backup")
    assert campaign.settings.spark.remote == "yarn" and killed, json.dumps(row)
    assert meets_targets(row), json.dumps(row)


@pytest.mark.faults  # kills the session platform's Spark JVM (its restart: a minute or two): make fault-trials
def test_one_spark_restart_trial_meets_the_targets(platform):
    """The Spark JVM (HiveServer2 and Spark Connect, one process) SIGKILLed at a random moment of a table-backup
    run and started again: the run recovers or fails loudly once, and a reader querying the previous backup
    all along never sees a partial, empty or doubled table, nor an error other than a connection-level one
    while the server is down (``Reader``).  The session's platform is this session's own: the campaign may
    kill its JVM."""
    with Campaign(dict(TEST_CONFIG), STATE / "faults-spark", 6700 + PORT_OFFSET, seed=7, max_outage=15,
                  sparse_dates=True, workflows=("table-backup",), spark_restart=True, own_platform=True) as campaign:
        row = summarize("spark_restart", [campaign.trial("spark_restart")], "table-backup")
    assert row["reader"]["answers"] > 0 and row["reader"]["violations"] == [], json.dumps(row)
    assert meets_targets(row), json.dumps(row)
