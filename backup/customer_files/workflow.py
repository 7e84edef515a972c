"""What every part of the customer-files workflow shares: its name, its config section, its phase
names and the outputs its phases hand to later ones through the job record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from base.errors import ConfigError
from backup.outputs import PhaseOutputs
from backup.resources import Resources
from config.settings import CustomerFilesSettings

WORKFLOW = "customer-files"
TARGET = "all"  # one run covers every configured customer: one lock for all
DESTINATIONS = ("primary", "secondary")  # the roles a customer may have; its own: CustomerLocations.roles()


def config(res: Resources) -> CustomerFilesSettings:
    """The customer_files section; ConfigError if the config has none."""
    cfg = res.settings.customer_files
    if cfg is None:
        raise ConfigError("customer_files: section missing from the config; the customer-files workflow is not set up")
    return cfg


def copy_phase(customer: str) -> str:
    """Phase name of one customer's copy task in the job record."""
    return f"copy:{customer}"


def phase_names(cfg: CustomerFilesSettings) -> list[str]:
    """Every phase of a run, in order."""
    return ["lock", "discover", *(copy_phase(c) for c in cfg.customers), "collect", "flag"]


# -- outputs handed on through the job record -----------------------------------

@dataclass(frozen=True)
class Discovered(PhaseOutputs):
    """discover → collect: what discover found, per customer and in total.

    ``customers``: customer -> found, planned, unchanged, settling, deferred, unmatched, skipped (not a
    regular file: never read, listed in ``skipped``), refused (a bad name: a failed manifest row)
    (collect adds its counts to each entry).  ``discovered``: the same counts summed.
    """

    written_by: ClassVar[str] = "discover"
    customers: dict
    discovered: dict
    #: entries not backed up because they are not regular files (links, fifos...): customer, path, reason
    skipped: list = field(default_factory=list)
    #: ledger entries removed because their files left the source folders (``ledger.prune_ledger``)
    ledger_pruned: int = 0


@dataclass(frozen=True)
class Collected(PhaseOutputs):
    """collect → flag: per-customer counts with copy results and the error that ended a customer's
    task, their totals, the manifest's path and what the Hive load did."""

    written_by: ClassVar[str] = "collect"
    customers: dict
    totals: dict
    manifest: str
    hive: dict


@dataclass(frozen=True)
class FlagCounts(PhaseOutputs):
    """The counts a flag file reports, whichever phase the run ended after: collect's totals, else
    discover's (a run that failed before collect), else none."""

    written_by: ClassVar[str] = "collect"
    totals: dict | None = None
    discovered: dict | None = None


@dataclass(frozen=True)
class Flagged(PhaseOutputs):
    """The status flag written (flag, or after a failure elsewhere): SUCCESS / PARTIAL / FAIL and where."""

    written_by: ClassVar[str] = "flag"
    flag: str
    flag_uri: str
