"""CDSi calendar arithmetic (Logic Specification 4.6, section 3.4 "Date Calculations").

Owns the parsing of supporting-data durations such as ``"12 months - 4 days"`` into
:class:`Offset` values and the addition of an offset to a date by rules CALCDT-1..6.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from functools import lru_cache
from typing import NamedTuple

__all__ = ["MAX_DATE", "MIN_DATE", "Offset", "add_offset", "parse_offset", "parse_xml_date"]

# Table 3-4: assumed values when an effective/cessation (or other bounding) date is empty.
MIN_DATE = date(1900, 1, 1)
MAX_DATE = date(2999, 12, 31)

_TERM = re.compile(r"([+-]?)\s*(\d+)\s*(year|month|week|day)s?", re.IGNORECASE)


class Offset(NamedTuple):
    """A signed duration made of years, months and days (weeks are folded into days).

    A named tuple rather than a dataclass: offsets key the date caches of every forecast and
    a tuple hashes and compares in C.
    """

    years: int = 0
    months: int = 0
    days: int = 0

    def __str__(self) -> str:
        parts: list[str] = []
        for value, unit in ((self.years, "years"), (self.months, "months"), (self.days, "days")):
            if value or (not parts and unit == "days" and not self.years and not self.months):
                sign = "-" if value < 0 else "+"
                parts.append(f"{sign} {abs(value)} {unit}" if parts else f"{value} {unit}")
        return " ".join(parts)


def parse_offset(text: str | None) -> Offset | None:
    """Parse a supporting-data duration; blank or ``n/a`` gives ``None``."""
    if text is None:
        return None
    cleaned = text.strip()
    if not cleaned or cleaned.lower() == "n/a":
        return None
    years = months = days = 0
    consumed = 0
    for match in _TERM.finditer(cleaned):
        sign = -1 if match.group(1) == "-" else 1
        value = sign * int(match.group(2))
        unit = match.group(3).lower()
        if unit == "year":
            years += value
        elif unit == "month":
            months += value
        elif unit == "week":
            days += 7 * value
        else:
            days += value
        consumed += 1
    if consumed == 0:
        raise ValueError(f"unrecognised CDSi duration: {text!r}")
    return Offset(years, months, days)


def _normalise(year: int, month: int, day: int) -> date:
    # CALCDT-5: a computed date that does not exist moves to the first of the next month.
    try:
        return date(year, month, day)
    except ValueError:
        if month == 12:
            return date(year + 1, 1, 1)
        return date(year, month + 1, 1)


@lru_cache(maxsize=65536)
def add_offset(start: date, offset: Offset) -> date:
    """Add ``offset`` to ``start``: years first, then months, then days (CALCDT-6)."""
    result = start
    if offset.years:
        result = _normalise(result.year + offset.years, result.month, result.day)
    if offset.months:
        total = result.year * 12 + (result.month - 1) + offset.months
        result = _normalise(total // 12, total % 12 + 1, result.day)
    if offset.days:
        result = result + timedelta(days=offset.days)
    return result


def parse_xml_date(text: str | None) -> date | None:
    """Parse a supporting-data calendar date (``YYYYMMDD`` or ISO); blank gives ``None``."""
    if text is None:
        return None
    cleaned = text.strip()
    if not cleaned or cleaned.lower() == "n/a":
        return None
    if "/" in cleaned:
        month, day, year = (int(part) for part in cleaned.split("/"))
        return date(year, month, day)
    cleaned = cleaned.replace("-", "")
    if len(cleaned) == 8 and cleaned.isdigit():
        return date(int(cleaned[:4]), int(cleaned[4:6]), int(cleaned[6:]))
    raise ValueError(f"unrecognised supporting-data date: {text!r}")
