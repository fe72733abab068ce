"""Patient matching (engine.matching): identifier first, then exact demographics, else new."""

from __future__ import annotations

from datetime import date

import pytest

from engine.domain import Identifier, Name, Patient
from engine.matching import (
    Candidate,
    ScopedIdentifier,
    decide,
    match_key,
    normalise,
    scope_identifier,
    scoped_identifiers,
)

BORN = date(2020, 1, 1)
MR_A = ScopedIdentifier("ORG-A", "A-MRN", "MR", "100")


def patient(family: str = "Lopez", given: str = "Ana", born: date | None = BORN,
            sex: str = "F", birth_order: int | None = None) -> Patient:
    return Patient(names=(Name(family, given, type_code="L"),), birth_date=born, sex=sex,
                   birth_order=birth_order)


def candidate(pid: int, family: str = "lopez", given: str = "ana", born: date | None = BORN,
              sex: str = "F", birth_order: int | None = None,
              identifiers: tuple[ScopedIdentifier, ...] = ()) -> Candidate:
    return Candidate(pid, family, given, born, sex, birth_order, identifiers)


@pytest.mark.parametrize("text,expected", [
    ("Lopez", "lopez"),
    ("Ñúñez", "nunez"),
    ("Müller", "muller"),
    ("O'Brien-Smith", "obriensmith"),
    ("Zoë 2nd", "zoend"),
    ("王", "王"),
    ("", ""),
], ids=["plain", "spanish", "german", "punctuation", "digits-dropped", "chinese", "empty"])
def test_normalise_drops_accents_case_and_non_letters(text: str, expected: str) -> None:
    """Names compare without accents, case, digits or punctuation."""
    assert normalise(text) == expected


@pytest.mark.parametrize("identifier,expected", [
    (Identifier("55", "CAIR2", "SR"), ScopedIdentifier("*", "CAIR2", "SR", "55")),
    (Identifier("55", "OTHER", "SR"), ScopedIdentifier("ORG-A", "OTHER", "SR", "55")),
    (Identifier("100", "A-MRN", "MR"), MR_A),
    (Identifier("9", "SSA", "SS"), ScopedIdentifier("ORG-A", "SSA", "SS", "9")),
], ids=["our-sr-is-global", "foreign-sr-is-scoped", "mr-scoped-to-sender", "ss-scoped"])
def test_identifiers_are_scoped_to_the_sender_except_our_own(identifier: Identifier,
                                                             expected: ScopedIdentifier) -> None:
    """Only the registry's own SR id is global; everything else belongs to its sender."""
    assert scope_identifier(identifier, "ORG-A", "CAIR2") == expected


def test_scoped_identifiers_skip_empty_values_and_duplicates() -> None:
    """Empty PID-3 values are ignored and a repeated identifier counts once."""
    p = Patient(identifiers=(Identifier("100", "A-MRN", "MR"), Identifier("", "A-MRN", "MR"),
                             Identifier("100", "A-MRN", "MR")))
    assert scoped_identifiers(p, "ORG-A", "CAIR2") == (MR_A,)


def test_match_key_is_normalised_name_and_birth_date() -> None:
    """The demographic blocking key ignores accents and case."""
    assert match_key(patient("LÓPEZ", "ana")) == "lopez|ana|2020-01-01"


SR_1 = ScopedIdentifier("*", "CAIR2", "SR", "1")
PI_2 = ScopedIdentifier("ORG-A", "A", "PI", "7")


@pytest.mark.parametrize("keys,hits,candidates,expected", [
    ((MR_A,), [candidate(5, identifiers=(MR_A,))], [], (5, "identifier")),
    ((MR_A, SR_1), [candidate(9, identifiers=(MR_A,)), candidate(1, identifiers=(SR_1,))], [],
     (1, "identifier")),
    ((MR_A, PI_2), [candidate(4, identifiers=(PI_2,)), candidate(8, identifiers=(MR_A,))], [],
     (8, "identifier")),
    ((MR_A,), [candidate(7, identifiers=(MR_A,)), candidate(3, identifiers=(MR_A,))], [],
     (3, "identifier")),
    ((MR_A,), [], [candidate(2)], (2, "demographics")),
    ((MR_A,), [], [], (None, "new")),
    ((MR_A,), [], [candidate(2), candidate(3)], (None, "ambiguous")),
    ((MR_A,), [], [candidate(2, sex="M")], (None, "new")),
    ((MR_A,), [], [candidate(2, sex="U")], (2, "demographics")),
    ((MR_A,), [], [candidate(2, identifiers=(ScopedIdentifier("ORG-A", "A-MRN", "MR", "999"),))],
     (None, "new")),
    ((MR_A,), [], [candidate(2, identifiers=(ScopedIdentifier("ORG-B", "A-MRN", "MR", "999"),))],
     (2, "demographics")),
    ((MR_A,), [], [candidate(2, given="anna")], (None, "new")),
    ((MR_A,), [], [candidate(2), candidate(3, sex="M")], (2, "demographics")),
], ids=["identifier-hit", "sr-beats-mr", "mr-beats-pi", "same-strength-lowest-id",
        "exact-demographics", "no-candidates", "two-candidates-ambiguous",
        "sex-contradicts", "unknown-sex-does-not-contradict", "same-slot-other-value",
        "other-sender-slot-ignored", "name-differs", "contradicted-one-drops-out"])
def test_decide(keys: tuple[ScopedIdentifier, ...], hits: list[Candidate],
                candidates: list[Candidate], expected: tuple[int | None, str]) -> None:
    """The matching rule, case by case (engine.matching docstring)."""
    decision = decide(patient(), keys, hits, candidates)
    assert (decision.patient_id, decision.reason) == expected


@pytest.mark.parametrize("incoming,stored,expected", [
    (patient(birth_order=1), candidate(2, birth_order=2), None),
    (patient(birth_order=1), candidate(2, birth_order=1), 2),
    (patient(birth_order=None), candidate(2, birth_order=2), 2),
], ids=["twins-differ", "same-order", "order-unknown"])
def test_birth_order_separates_twins(incoming: Patient, stored: Candidate,
                                     expected: int | None) -> None:
    """Known, different birth orders are two people; an unknown one does not contradict."""
    assert decide(incoming, (), [], [stored]).patient_id == expected


@pytest.mark.parametrize("incoming", [
    patient(born=None), patient(family=""), patient(given="--"),
], ids=["no-birth-date", "no-family", "given-without-letters"])
def test_incomplete_demographics_never_match(incoming: Patient) -> None:
    """Without a family name, given name and birth date there is no demographic match."""
    assert decide(incoming, (), [], [candidate(2, family="", given="", born=None)]) \
        .patient_id is None
