"""CDSi date arithmetic (Logic Specification 4.6, section 3.4, CALCDT-1..6)."""

from __future__ import annotations

from datetime import date

import pytest

from engine.forecast.dates import Offset, add_offset, parse_offset, parse_xml_date

ADD_CASES = [
    pytest.param(date(2000, 1, 1), "3 years", date(2003, 1, 1), id="CALCDT-1 years"),
    pytest.param(date(2000, 1, 1), "6 months", date(2000, 7, 1), id="CALCDT-2 months"),
    pytest.param(date(2000, 11, 1), "6 months", date(2001, 5, 1), id="CALCDT-2 year rollover"),
    pytest.param(date(2000, 1, 1), "3 days", date(2000, 1, 4), id="CALCDT-3 days"),
    pytest.param(date(2000, 1, 1), "3 weeks", date(2000, 1, 22), id="CALCDT-3 weeks"),
    pytest.param(date(2000, 2, 1), "5 weeks", date(2000, 3, 7), id="CALCDT-3 leap year"),
    pytest.param(date(2001, 2, 1), "5 weeks", date(2001, 3, 8), id="CALCDT-3 common year"),
    pytest.param(date(2000, 1, 15), "0 days - 4 days", date(2000, 1, 11), id="CALCDT-4 minus"),
    pytest.param(date(2000, 3, 31), "6 months", date(2000, 10, 1), id="CALCDT-5 no Sep 31"),
    pytest.param(date(2000, 8, 31), "6 months", date(2001, 3, 1), id="CALCDT-5 no Feb 31"),
    pytest.param(date(2000, 1, 31), "6 months - 4 days", date(2000, 7, 27), id="CALCDT-6 order"),
    pytest.param(date(2000, 2, 29), "1 year", date(2001, 3, 1), id="leap day plus a year"),
    pytest.param(date(2010, 5, 1), "16 weeks - 4 days", date(2010, 8, 17), id="weeks minus days"),
    pytest.param(date(2010, 5, 1), "4 months + 4 weeks", date(2010, 9, 29), id="months plus weeks"),
]


@pytest.mark.parametrize(("start", "offset", "expected"), ADD_CASES)
def test_add_offset_follows_calcdt_rules(start: date, offset: str, expected: date) -> None:
    """Adding a CDSi duration applies years, then months, then days, rolling invalid dates forward."""
    parsed = parse_offset(offset)
    assert parsed is not None
    assert add_offset(start, parsed) == expected


PARSE_CASES = [
    pytest.param("12 months - 4 days", Offset(0, 12, -4), id="months minus days"),
    pytest.param("19 years", Offset(19, 0, 0), id="years"),
    pytest.param("1 year - 4 days", Offset(1, 0, -4), id="singular year"),
    pytest.param("6 years + 4 weeks", Offset(6, 0, 28), id="weeks fold into days"),
    pytest.param("0 days", Offset(0, 0, 0), id="zero"),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_offset_reads_supporting_data_durations(text: str, expected: Offset) -> None:
    """Supporting-data duration strings parse into signed year/month/day offsets."""
    assert parse_offset(text) == expected


@pytest.mark.parametrize("text", ["", "  ", "n/a", None], ids=["empty", "blank", "n/a", "none"])
def test_blank_duration_is_none(text: str | None) -> None:
    """A blank or n/a duration means "not specified"."""
    assert parse_offset(text) is None


def test_unrecognised_duration_is_rejected() -> None:
    """A duration with no recognisable term is an import error, not a silent zero."""
    with pytest.raises(ValueError, match="unrecognised"):
        parse_offset("soon")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("20250827", date(2025, 8, 27), id="compact"),
        pytest.param("01/01/1957", date(1957, 1, 1), id="US month/day/year"),
        pytest.param("", None, id="blank"),
    ],
)
def test_parse_xml_date(text: str, expected: date | None) -> None:
    """Supporting-data calendar dates come in compact and US formats."""
    assert parse_xml_date(text) == expected
