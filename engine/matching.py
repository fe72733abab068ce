"""Patient matching for VXU intake: a pure decision over candidates the store looked up.

The rule (deterministic; no scores, no probabilistic links):

1. **Identifier first.** Every PID-3 identifier is scoped: the registry's own SR id
   (authority = our registry authority) is global (scope ``*``); every other identifier —
   MR, PI, PT, SS, MA, ... — is scoped to the *sending organization* and its assigning
   authority. An MR 1234 from clinic A and an MR 1234 from clinic B are different keys, so
   they can never collapse two people into one. If the scoped identifiers hit exactly one
   registry patient, that is the match. If they hit several (a sender reused an id), the
   patient hit by the strongest identifier wins (SR, then MR, PI, PT, others; then lowest id).
2. **Then demographics, exactly.** With no identifier hit, a candidate matches when its
   normalised family name, normalised given name and birth date are all equal (normalised:
   Unicode NFKD, combining marks dropped, case-folded, non-letters removed), and nothing
   contradicts it: sex differs (both known), birth order differs (both known: twins), or
   the candidate already carries an identifier of the same scope, authority and type with a
   different value (that sender has them on file as someone else). Exactly one surviving
   candidate is the match.
3. **Otherwise a new patient.** Zero or several demographic candidates create a new
   registry patient: a wrong merge mixes two people's records and is far worse than a
   duplicate that an operator can merge later (IG Appendix A: ">1 match → local rules ...
   load as new").

The store makes the decision race-free: identifier keys are unique in the database and
demographic matching runs under a per-match-key lock (see engine.store.repository).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from engine.domain import Identifier, Patient

GLOBAL_SCOPE = "*"
_TYPE_STRENGTH = {"SR": 0, "MR": 1, "PI": 2, "PT": 3}


@dataclass(frozen=True, slots=True)
class ScopedIdentifier:
    """An identifier as the store keys it: (scope, authority, type, value)."""

    scope: str
    authority: str
    type_code: str
    value: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """What matching needs to know about a stored patient."""

    patient_id: int
    family_norm: str
    given_norm: str
    birth_date: date | None
    sex: str = ""
    birth_order: int | None = None
    identifiers: tuple[ScopedIdentifier, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """The match: a patient id (None = create a new patient) and why."""

    patient_id: int | None
    reason: str  # "identifier" | "demographics" | "new" | "ambiguous"


def normalise(text: str) -> str:
    """Name comparison form: accents dropped, case-folded, letters only (Ñ→n, ü→u, 中文 kept)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed.casefold()
                   if c.isalpha() and not unicodedata.combining(c))


def scope_identifier(identifier: Identifier, organization: str,
                     registry_authority: str) -> ScopedIdentifier:
    """The store key of one PID-3 identifier sent by `organization`."""
    if identifier.type_code == "SR" and identifier.authority == registry_authority:
        return ScopedIdentifier(GLOBAL_SCOPE, registry_authority, "SR", identifier.value)
    return ScopedIdentifier(organization, identifier.authority, identifier.type_code,
                            identifier.value)


def scoped_identifiers(patient: Patient, organization: str,
                       registry_authority: str) -> tuple[ScopedIdentifier, ...]:
    seen: dict[ScopedIdentifier, None] = {}
    for ident in patient.identifiers:
        if ident.value:
            seen.setdefault(scope_identifier(ident, organization, registry_authority))
    return tuple(seen)


def match_key(patient: Patient) -> str:
    """The demographic blocking key: same key ⇔ could match on demographics."""
    name = patient.legal_name
    born = patient.birth_date.isoformat() if patient.birth_date else ""
    return f"{normalise(name.family)}|{normalise(name.given)}|{born}"


def decide(patient: Patient, keys: Sequence[ScopedIdentifier],
           identifier_hits: Sequence[Candidate],
           demographic_candidates: Sequence[Candidate]) -> Decision:
    """Apply the rule in the module docstring."""
    if identifier_hits:
        def strength(c: Candidate) -> tuple[int, int]:
            best = min((_TYPE_STRENGTH.get(k.type_code, 9) for k in c.identifiers
                        if k in keys), default=9)
            return best, c.patient_id
        return Decision(min(identifier_hits, key=strength).patient_id, "identifier")

    name = patient.legal_name
    family, given = normalise(name.family), normalise(name.given)
    if not family or not given or patient.birth_date is None:
        return Decision(None, "new")
    slots = {(k.scope, k.authority, k.type_code): k.value for k in keys}
    survivors = [c for c in demographic_candidates
                 if c.family_norm == family and c.given_norm == given
                 and c.birth_date == patient.birth_date
                 and not _contradicts(patient, c, slots)]
    if len(survivors) == 1:
        return Decision(survivors[0].patient_id, "demographics")
    return Decision(None, "ambiguous" if survivors else "new")


def _contradicts(patient: Patient, candidate: Candidate,
                 slots: dict[tuple[str, str, str], str]) -> bool:
    if patient.sex in ("M", "F") and candidate.sex in ("M", "F") and patient.sex != candidate.sex:
        return True
    if (patient.birth_order is not None and candidate.birth_order is not None
            and patient.birth_order != candidate.birth_order):
        return True
    for ident in candidate.identifiers:
        sent = slots.get((ident.scope, ident.authority, ident.type_code))
        if sent is not None and sent != ident.value:
            return True
    return False
