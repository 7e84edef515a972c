"""The export window: calendar months, start inclusive, end exclusive.

With ``months=5`` and no end, a run on 2026-11-25 exports ``partition_date``
values from 2026-06-01 (inclusive) to 2026-11-01 (exclusive): the five full
calendar months before the current one, in the configured timezone (UTC by
default).  ``end`` may be any date; ``start`` is the same day ``months``
calendar months earlier, clamped to the end of a shorter month.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from base.errors import ConfigError, InvalidInput


def add_months(d: dt.date, months: int) -> dt.date:
    """Shift a date by calendar months, clamping the day to the month's length."""
    idx = d.year * 12 + (d.month - 1) + months
    year, month = divmod(idx, 12)
    month += 1
    return dt.date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class Window:
    """Half-open date range [start, end)."""

    start: dt.date
    end: dt.date

    @property
    def label(self) -> str:
        """Compact form used in file names: 20260601-20261101."""
        return f"{self.start:%Y%m%d}-{self.end:%Y%m%d}"

    def split(self, parts: int) -> list["Window"]:
        """Split into at most ``parts`` contiguous month-aligned pieces, in order."""
        bounds = [self.start]
        while bounds[-1] < self.end:
            nxt = add_months(dt.date(bounds[-1].year, bounds[-1].month, 1), 1)
            bounds.append(min(nxt, self.end))
        months = [Window(a, b) for a, b in zip(bounds, bounds[1:])]
        if parts <= 1 or len(months) <= 1:
            return [self]
        per = -(-len(months) // min(parts, len(months)))
        return [Window(g[0].start, g[-1].end) for g in (months[i:i + per] for i in range(0, len(months), per))]

    def as_dict(self) -> dict:
        """JSON form for job records."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "end_exclusive": True}


#: dates a request may name: wide enough for any real window, narrow enough that a window of 120 months
#: before it, or a run id after it, is still a date (year 1 crashed the window arithmetic)
EARLIEST, LATEST = dt.date(1900, 1, 1), dt.date(2999, 12, 31)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_date(text, what: str = "date") -> dt.date:
    """A date given as the string YYYY-MM-DD between 1900-01-01 and 2999-12-31; InvalidInput otherwise.

    Only a string: an integer such as 20260101 is refused (``fromisoformat`` of its text would accept it).
    """
    if not isinstance(text, str) or not _ISO_DATE.fullmatch(text):
        raise InvalidInput(f"invalid {what} {str(text)[:40]!r}: expected a string YYYY-MM-DD")
    try:
        day = dt.date.fromisoformat(text)
    except ValueError as e:
        raise InvalidInput(f"invalid {what} {text!r}: not a calendar date") from e
    if not EARLIEST <= day <= LATEST:
        raise InvalidInput(f"invalid {what} {text!r}: expected a date from {EARLIEST} to {LATEST}")
    return day


def export_window(months: int, end: str | dt.date | None, timezone: str, today: dt.date | None = None) -> Window:
    """The window for ``months`` months ending (exclusive) at ``end`` or this month's first day."""
    if not isinstance(months, int) or isinstance(months, bool) or not 1 <= months <= 120:
        raise InvalidInput(f"invalid months {months!r}: expected an integer from 1 to 120")
    if end is None:
        try:
            tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ConfigError(f"edge_export.timezone: unknown timezone {timezone!r}") from e
        today = today or dt.datetime.now(tz).date()
        end_date = dt.date(today.year, today.month, 1)
    else:
        end_date = parse_date(end.isoformat() if isinstance(end, dt.date) else end, "end date")
    return Window(add_months(end_date, -months), end_date)
