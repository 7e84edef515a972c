"""What the phases of table-backup hand to later phases through the job record's ``outputs``.

Spark state never crosses a phase, so these keys are the only way one phase tells the next
what it found or made.  Other ``outputs`` keys (sample sizes, dropped tables, months) are
reports for people and tools; no phase reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from backup.outputs import PhaseOutputs


@dataclass(frozen=True)
class CatalogState(PhaseOutputs):
    """What the catalog holds under the backup name (one listing; see ``catalog.catalog_state``).

    validate → load; load lists again after a retry or a redelivery (an earlier attempt may have
    changed it).  ``previous_data_table`` also goes on to write (the generation it replaces).
    """

    written_by: ClassVar[str] = "validate"
    previous_data_table: str | None  # the data table the backup view reads now, lower case
    backup_reads: list[str]  # every data table the view's listing names: never stale
    stale_data_tables: list[str]  # older generations and tables of failed runs, dropped by the load
    previous_rejects: str | None  # lines in the rejects table: None (no table), a count, or 'unknown'


@dataclass(frozen=True)
class Validated(PhaseOutputs):
    """validate → load: the live schema the sample was checked with (``StructType.json()``) and the catalog state.

    Both may be missing from records that an earlier version validated: the load then reads them itself.
    """

    written_by: ClassVar[str] = "validate"
    live_schema: str | None = None
    previous_data_table: str | None = None
    backup_reads: list[str] | None = None
    stale_data_tables: list[str] = field(default_factory=list)
    previous_rejects: str | None = None

    def catalog(self) -> CatalogState | None:
        """The catalog state validate recorded, or None if it recorded none."""
        if self.backup_reads is None:
            return None
        return CatalogState(previous_data_table=self.previous_data_table, backup_reads=self.backup_reads,
                            stale_data_tables=self.stale_data_tables, previous_rejects=self.previous_rejects)


@dataclass(frozen=True)
class Loaded(PhaseOutputs):
    """load → write and finish (and every phase's names, through ``names_of``): the staging table and its counts.

    Also written when the rejects exceed the ratio (the job then fails): the counts say by how much.
    """

    written_by: ClassVar[str] = "load"
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    data_table: str  # this run's data table: the staging table until write switches the view onto it
    rejects_table: str
    previous_data_table: str | None
    columns: list[str]  # the backup's columns: the live ones, then year_part, month_part
    dropped_tables: list[str]


@dataclass(frozen=True)
class DataTable(PhaseOutputs):
    """load → every later phase, through ``names_of``: this run's data table as the load named it
    (a load by an earlier version may have derived its tag otherwise)."""

    written_by: ClassVar[str] = "load"
    data_table: str


@dataclass(frozen=True)
class Staged(PhaseOutputs):
    """load → finish: the partitions of the staging table, read back once its rows were checked."""

    written_by: ClassVar[str] = "load"
    partitions_written: int
    months: list[str]  # YYYY-MM, sorted


@dataclass(frozen=True)
class Written(PhaseOutputs):
    """write → finish: the backup name now reading this run's table, the table it replaced, the versions expired."""

    written_by: ClassVar[str] = "write"
    backup_table: str
    replaced_data_table: str | None
    expired_backups: list[str]
