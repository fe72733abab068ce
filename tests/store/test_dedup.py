"""Dose de-duplication (engine.dedup): same dose, which record wins, one record per dose."""

from __future__ import annotations

from datetime import date

import pytest

from engine.dedup import (
    DoseFacts,
    consolidate,
    find_duplicate,
    group_set,
    precedence,
    same_dose,
    takes_precedence,
)

DAY = date(2024, 1, 15)
HEPB = frozenset({"HepB"})
DTAP_HIB_IPV = frozenset({"DTaP", "Hib", "Polio"})
DTAP_IPV = frozenset({"DTaP", "Polio"})


def dose(event_id: int = 1, groups: frozenset[str] = HEPB, on: date | None = DAY,
         kind: str = "dose", historical: bool = False, lot: bool = True, order: int = 0,
         signature: str = "") -> DoseFacts:
    return DoseFacts(event_id, kind, on, groups, historical, lot, order, signature)


@pytest.mark.parametrize("cvx,groups,expected", [
    ("08", ["HepB"], HEPB),
    ("120", ["DTaP", "Hib", "Polio"], DTAP_HIB_IPV),
    ("999", [], frozenset({"CVX:999"})),
], ids=["one-group", "combination", "unknown-stands-for-itself"])
def test_group_set(cvx: str, groups: list[str], expected: frozenset[str]) -> None:
    """A CVX's vaccine groups, or the code itself when it has none."""
    assert group_set(cvx, groups) == expected


@pytest.mark.parametrize("a,b,expected", [
    (dose(), dose(2), True),
    (dose(groups=DTAP_HIB_IPV), dose(2, groups=DTAP_IPV), True),
    (dose(groups=frozenset({"Flu"})), dose(2, groups=frozenset({"COVID-19"})), False),
    (dose(), dose(2, on=date(2024, 1, 16)), False),
    (dose(on=None), dose(2, on=None), False),
    (dose(kind="refusal"), dose(2), False),
    (dose(kind="refusal"), dose(2, kind="refusal"), True),
    (dose(kind="observation", signature="a=1"), dose(2, kind="observation", signature="a=1"),
     True),
    (dose(kind="observation", signature="a=1"), dose(2, kind="observation", signature="a=2"),
     False),
    (dose(groups=frozenset({"CVX:998"})), dose(2, groups=frozenset({"CVX:999"})), False),
], ids=["same-group-same-day", "combination-overlaps", "different-groups", "different-day",
        "no-date", "refusal-vs-dose", "same-refusal", "same-observations",
        "different-observations", "unknown-codes-differ"])
def test_same_dose(a: DoseFacts, b: DoseFacts, expected: bool) -> None:
    """Same kind, same date, overlapping vaccine groups (observations: same answers)."""
    assert same_dose(a, b) is expected
    assert same_dose(b, a) is expected


@pytest.mark.parametrize("new,old,expected", [
    (dose(historical=False), dose(2, historical=True), True),
    (dose(historical=True), dose(2, historical=False), False),
    (dose(lot=True), dose(2, lot=False), True),
    (dose(lot=False), dose(2, lot=True), False),
    (dose(), dose(2), True),
    (dose(historical=True, lot=True), dose(2, historical=False, lot=False), False),
], ids=["administered-beats-historical", "historical-loses", "lot-beats-no-lot",
        "no-lot-loses", "tie-goes-to-newer", "administered-outranks-lot"])
def test_takes_precedence(new: DoseFacts, old: DoseFacts, expected: bool) -> None:
    """Administered over historical, then lot over no lot, then the newer report."""
    assert takes_precedence(new, old) is expected


def test_find_duplicate_prefers_the_highest_precedence_record() -> None:
    """With several matching records, the best one is the duplicate."""
    existing = [dose(1, historical=True), dose(2, lot=False), dose(3, order=5),
                dose(4, groups=frozenset({"MMR"}))]
    found = find_duplicate(dose(9), existing)
    assert found is not None and found.event_id == 3


def test_find_duplicate_none_when_nothing_matches() -> None:
    """A dose of another group or day has no duplicate."""
    assert find_duplicate(dose(groups=frozenset({"MMR"})), [dose(2)]) is None


def test_precedence_orders_records() -> None:
    """Sorting by precedence puts administered, lot-carrying, newer records first."""
    records = [dose(1, historical=True), dose(2, lot=False), dose(3, order=1), dose(4)]
    assert [r.event_id for r in sorted(records, key=precedence, reverse=True)] == [3, 4, 2, 1]


def test_consolidate_keeps_one_winner_per_dose_in_date_order() -> None:
    """Histories show one record per dose (the winner), oldest first."""
    records = [dose(1, historical=True), dose(2), dose(3, groups=frozenset({"MMR"}),
                                                        on=date(2023, 5, 1)),
               dose(4, groups=frozenset({"Flu"}))]
    assert [r.event_id for r in consolidate(records)] == [3, 2, 4]
