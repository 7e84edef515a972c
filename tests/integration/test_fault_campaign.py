"""One trial of each fault kind of the campaign (bench/faults.py), so CI keeps every kind alive.

``make faults`` runs the full campaign (20 trials a kind, outages up to 90 s);
here each kind runs once with outages of at most 15 s, and its row must meet
the campaign's targets: nothing lost, duplicated or half-written, one alert per
failed episode and none for a recovered run.  One restore trial runs with the HDFS scenarios of ``make faults``
(marker ``faults``): it costs about three minutes, more than ``make test`` has to spare.
"""

from __future__ import annotations

import json

import pytest

from bench.faults import KINDS, Campaign, meets_targets, summarize
from tests.conftest import PORT_OFFSET, STATE, TEST_CONFIG

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def campaign(platform):
    with Campaign(dict(TEST_CONFIG), STATE / "faults", 6660 + PORT_OFFSET, seed=7, max_outage=15) as c:
        yield c


@pytest.mark.parametrize("kind", KINDS)
def test_one_trial_meets_the_targets(campaign, kind):
    row = summarize(kind, [campaign.trial(kind)])
    assert meets_targets(row), json.dumps(row)


@pytest.mark.faults  # about 3 minutes (a campaign of its own: an edge-export and a restore to calibrate): make faults
def test_one_restore_trial_meets_the_targets(platform):
    """The restores' rows stay alive with one trial of one kind (each restore trial costs Spark runs): the whole
    worker SIGKILLed at a random moment of a restore-edge-export, the restore that crosses the most systems (the
    edge node, a local staging folder, Spark); it restores the archive of the edge-export flow's first run."""
    with Campaign(dict(TEST_CONFIG), STATE / "faults-restore", 6670 + PORT_OFFSET, seed=7, max_outage=15,
                  workflows=("restore-edge-export",)) as campaign:
        row = summarize("worker_kill", [campaign.trial("worker_kill")], "restore-edge-export")
    assert meets_targets(row), json.dumps(row)
