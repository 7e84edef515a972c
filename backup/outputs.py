"""Declared hand-over between phases: what one phase leaves in the job record's ``outputs`` for a later one.

Each workflow declares, per hand-over, a frozen dataclass deriving from ``PhaseOutputs``: its
fields are the ``outputs`` keys the writing phase sets (the names in the record JSON, which
``backupctl show``, the tests and the docs read) and the reading phases get them typed through
``read``.  A field with a default may be missing from a record (written by an earlier version,
or only on some paths); a field without one must be there.

Reading costs nothing beyond the record the phase already holds: no Redis round trip.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Self

from base.errors import FatalError


class PhaseOutputs:
    """Base of a frozen dataclass of ``outputs`` keys one phase writes and later phases read."""

    #: the phase that writes these keys (named in the error of a record that lacks one)
    written_by: ClassVar[str] = "?"

    @classmethod
    def _missing(cls, out: dict) -> str | None:
        for f in dataclasses.fields(cls):
            if f.name not in out and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                return f.name
        return None

    @classmethod
    def read(cls, rec: dict) -> Self:
        """The keys from ``rec["outputs"]``; FatalError naming the first required key the record lacks."""
        out = rec.get("outputs") or {}
        missing = cls._missing(out)
        if missing is not None:
            raise FatalError(f"job {rec.get('job_id')}: outputs.{missing} is missing from the job record "
                             f"(the {cls.written_by} phase writes it); the record was changed or damaged")
        return cls(**{f.name: out[f.name] for f in dataclasses.fields(cls) if f.name in out})

    @classmethod
    def find(cls, rec: dict) -> Self | None:
        """Like ``read``, or None if the record lacks a required key (the writing phase has not run)."""
        return None if cls._missing(rec.get("outputs") or {}) is not None else cls.read(rec)

    def as_outputs(self) -> dict:
        """The keys to merge into ``outputs`` (``ctx.done``), in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
