"""Dose de-duplication: when two immunization records are the same dose, and which one wins.

The rule:

* **Same dose** ⇔ same patient, same administration date, and the CDC vaccine groups of the
  two CVX codes intersect (a CVX with no known group stands for itself). So "HepB,
  unspecified" (45) and "HepB, adolescent" (08) on one day are one dose; Flu and COVID on one
  day are two; a combination (DTaP-Hib-IPV, 120) and a DTaP-IPV (130) on one day are one.
  Refusals are the same refusal on the same rule; 998 observation groups are the same when
  date and the set of (OBX-3, value) answers are equal.
* **Precedence** (which record's content represents the dose): an administered record (RXA-9
  00) beats a historical one (01–08); then a record with a lot number beats one without;
  then the newer report wins (a sender's later resend is its correction).

Where it applies:

* **At intake, within one organization**: a new record (RXA-21 A with an ORC-3 the org has
  not used, or no usable ORC-3) that is the same dose as one of *that org's* active records
  is merged into it — the new ORC-3 becomes another key of the existing event and the content
  is replaced only when the new record takes precedence. A retransmission under a new
  control id therefore never stores a dose twice.
* **Across organizations** every org keeps its own record (its ORC-3 keys, updates and
  deletes stay its own); `consolidate` picks one record per dose for histories.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True, slots=True)
class DoseFacts:
    """What de-duplication needs to know about one stored or incoming record."""

    event_id: int
    kind: str
    administered_on: date | None
    vaccine_groups: frozenset[str]
    historical: bool = False
    has_lot: bool = False
    reported_order: int = 0  # larger = reported later
    signature: str = ""  # 998 groups: the answers; refusals/doses: unused


def group_set(cvx: str, groups: Iterable[str]) -> frozenset[str]:
    """Vaccine groups of a CVX, or the code itself when the CDC table has no group for it."""
    found = frozenset(groups)
    return found if found else frozenset({f"CVX:{cvx}"})


def same_dose(a: DoseFacts, b: DoseFacts) -> bool:
    if a.kind != b.kind or a.administered_on is None or a.administered_on != b.administered_on:
        return False
    if a.kind == "observation":
        return a.signature == b.signature
    return bool(a.vaccine_groups & b.vaccine_groups)


def precedence(d: DoseFacts) -> tuple[bool, bool, int]:
    """Higher wins: administered over historical, lot over no lot, newer over older."""
    return (not d.historical, d.has_lot, d.reported_order)


def find_duplicate(new: DoseFacts, existing: Sequence[DoseFacts]) -> DoseFacts | None:
    """The existing record `new` duplicates (the highest-precedence one if several)."""
    dupes = [e for e in existing if same_dose(new, e)]
    return max(dupes, key=precedence) if dupes else None


def takes_precedence(new: DoseFacts, old: DoseFacts) -> bool:
    """Whether `new` should replace `old`'s content (ties go to the newer report)."""
    return (not new.historical, new.has_lot) >= (not old.historical, old.has_lot)


def consolidate(records: Sequence[DoseFacts]) -> list[DoseFacts]:
    """One record per dose (the winner by precedence), in date order."""
    winners: list[DoseFacts] = []
    for record in sorted(records, key=precedence, reverse=True):
        if not any(same_dose(record, w) for w in winners):
            winners.append(record)
    return sorted(winners, key=lambda d: (d.administered_on or date.min, d.event_id))
