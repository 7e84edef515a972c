"""Staging tables of one load delivery each: what a killed worker's statement still writes stays out of the restore.

A worker killed while its Spark statement runs does not stop the statement: the server goes on
beside the redelivered phase (measured 2026-12-06: a Spark Connect ``INSERT`` finished 30 s after its
client was SIGKILLed). When both wrote one staging table, the fault campaign saw a partition missing
(the orphan's aborted write removed it) and a month twice (both overwrites committed). Stopping the
orphan is not reliable (an interrupt that landed between the two Spark jobs of one ``INSERT`` let the
write job run and commit), so its output is made harmless instead:

* every start of a load writes a table of its own, ``<base>_<8 hex digits>`` (random, not the delivery
  count: a Redis restart may lose the count's last increment, never make two random names equal);
* the load records the name of the table whose rows it counted and verified, and only that table is
  ever given the target's name;
* the swap, once the verified table has the target's name, drops the job's other staging tables
  (those carrying the job's id in the workflow's property), and a failed job's cleanup drops all of
  them.

An orphan still running when its table is dropped fails at its commit or leaves its files in the
warehouse folder of a name nobody uses again (never in a table). Cost: one ``SHOW TABLE EXTENDED``
per swap or cleanup.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING

from base.identifiers import TableName, identifier
from connectors.spark import drop, tables_like

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: the suffix a delivery adds to the base staging name: "_" and 8 hex digits
SUFFIX_LENGTH = 9


def longest_name(base: TableName, what: str = "staging table name") -> TableName:
    """``base`` with a delivery's suffix's worth of characters: checked at submit, so that a name too long for
    a delivery's table is refused before anything runs (InvalidInput)."""
    return TableName(base.db, identifier(base.table + "_" + "0" * (SUFFIX_LENGTH - 1), what))


def delivery_table(base: TableName) -> TableName:
    """A new staging table name for one start of a load: ``<base>_<8 random hex digits>``."""
    return TableName(base.db, identifier(f"{base.table}_{secrets.token_hex(4)}", "staging table name"))


def job_staging_tables(spark: "SparkSession", base: TableName, prop: str, job_id: str) -> list[TableName]:
    """The staging tables of ``job_id`` under ``base``: ``base`` itself (a load before per-delivery names) and
    ``base_<8 hex>``, each only if its property ``prop`` is the job's id."""
    name = re.compile(re.escape(base.table.lower()) + r"(_[0-9a-f]{8})?")
    found = tables_like(spark, base.db, f"{base.table}*")
    return sorted((TableName(base.db, identifier(t, "staging table name")) for t, info in found.items()
                   if name.fullmatch(t) and info["properties"].get(prop) == job_id), key=str)


def drop_job_staging_tables(spark: "SparkSession", base: TableName, prop: str, job_id: str) -> list[str]:
    """Drop every staging table of ``job_id`` under ``base`` (see ``job_staging_tables``); their names."""
    tables = job_staging_tables(spark, base, prop, job_id)
    for t in tables:
        drop(spark, t, "TABLE")
    return [str(t) for t in tables]
