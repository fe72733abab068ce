"""The registry's domain values: what a VXU says about a patient and their immunizations.

Owns the frozen dataclasses passed between mapping (`engine.mapping`), the pure decisions
(`engine.matching`, `engine.dedup`) and the store (`engine.store`). Pure: no I/O, no
SQLAlchemy; a store reads and writes these and never lets its ORM rows escape.

Every text attribute defaults to "" (HL7 "not valued"); dates are `datetime.date` or None.
Composite HL7 types become small records (`Coded` for CE/CWE, `Name` for XPN, ...) with the
components the registry keeps; the raw timestamp text is kept next to a parsed date where a
sender may send more precision than a date (RXA-3), so a read-back reproduces what was sent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Coded:
    """CE/CWE: a code, its text and coding system, plus the alternate triplet."""

    code: str = ""
    text: str = ""
    system: str = ""
    alt_code: str = ""
    alt_text: str = ""
    alt_system: str = ""

    def __bool__(self) -> bool:
        return bool(self.code or self.text or self.alt_code)


@dataclass(frozen=True, slots=True)
class Name:
    """XPN: one person name with its name type code (L legal, A alias, M maiden, ...)."""

    family: str = ""
    given: str = ""
    middle: str = ""
    suffix: str = ""
    prefix: str = ""
    type_code: str = ""

    def __bool__(self) -> bool:
        return bool(self.family or self.given)


@dataclass(frozen=True, slots=True)
class Identifier:
    """CX: an identifier, the authority that assigned it (CX.4.1) and its type (CX.5)."""

    value: str = ""
    authority: str = ""
    type_code: str = ""

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True, slots=True)
class Address:
    """XAD: a postal address with its type (H home, M mailing, BDL birth state, ...)."""

    street: str = ""
    other: str = ""
    city: str = ""
    state: str = ""
    zip: str = ""
    country: str = ""
    type_code: str = ""
    county: str = ""

    def __bool__(self) -> bool:
        return any((self.street, self.other, self.city, self.state, self.zip, self.country))


@dataclass(frozen=True, slots=True)
class Phone:
    """XTN: a telephone number or e-mail address (use PRN/NET, equipment PH/CP/X.400)."""

    use: str = ""
    equipment: str = ""
    email: str = ""
    country_code: str = ""
    area: str = ""
    number: str = ""
    extension: str = ""

    def __bool__(self) -> bool:
        return bool(self.number or self.email)


@dataclass(frozen=True, slots=True)
class Provider:
    """XCN: a clinician (administering, ordering, entering) and the authority of their id."""

    id: str = ""
    family: str = ""
    given: str = ""
    middle: str = ""
    suffix: str = ""
    authority: str = ""
    id_type: str = ""

    def __bool__(self) -> bool:
        return bool(self.id or self.family or self.given)


@dataclass(frozen=True, slots=True)
class Site:
    """LA2 (RXA-11): where a dose was given; `facility` is the CAIR site code (LA2.4)."""

    point_of_care: str = ""
    facility: str = ""
    street: str = ""
    city: str = ""
    state: str = ""
    zip: str = ""

    def __bool__(self) -> bool:
        return bool(self.facility or self.point_of_care or self.street)


@dataclass(frozen=True, slots=True)
class EventKey:
    """ORC-3 (EI): the sender's own id for an immunization event and its authority.

    Keys are scoped to the owning organization in the store: two organizations may use the
    same ORC-3 for different events.
    """

    id: str = ""
    authority: str = ""

    def __bool__(self) -> bool:
        return bool(self.id)


@dataclass(frozen=True, slots=True)
class Patient:
    """PID: who the message is about, as the sender knows them."""

    identifiers: tuple[Identifier, ...] = ()
    names: tuple[Name, ...] = ()
    mother_maiden_names: tuple[Name, ...] = ()
    birth_date: date | None = None
    sex: str = ""
    races: tuple[Coded, ...] = ()
    ethnicities: tuple[Coded, ...] = ()
    addresses: tuple[Address, ...] = ()
    phones: tuple[Phone, ...] = ()
    multiple_birth: str = ""
    birth_order: int | None = None
    death_date: date | None = None
    death_indicator: str = ""

    @property
    def legal_name(self) -> Name:
        """The first name typed L, else the first name sent."""
        for name in self.names:
            if name.type_code == "L":
                return name
        return self.names[0] if self.names else Name()


@dataclass(frozen=True, slots=True)
class ResponsiblePerson:
    """NK1: a parent, guardian or other responsible person."""

    names: tuple[Name, ...] = ()
    relationship: Coded = field(default_factory=Coded)
    addresses: tuple[Address, ...] = ()
    phones: tuple[Phone, ...] = ()


@dataclass(frozen=True, slots=True)
class PatientSettings:
    """PD1 as set by one organization: publicity, protection ("lock"), registry status."""

    publicity: Coded = field(default_factory=Coded)
    publicity_date: date | None = None
    protection: str = ""
    protection_date: date | None = None
    registry_status: str = ""
    registry_status_date: date | None = None

    def __bool__(self) -> bool:
        return bool(self.publicity or self.protection or self.registry_status)


@dataclass(frozen=True, slots=True)
class Observation:
    """One OBX: LOINC question (OBX-3), answer (OBX-5) and the sub-id linking related ones."""

    code: Coded = field(default_factory=Coded)
    value_type: str = ""
    value: str = ""
    coded_value: Coded = field(default_factory=Coded)
    units: Coded = field(default_factory=Coded)
    sub_id: str = ""
    observed_on: date | None = None
    method: Coded = field(default_factory=Coded)
    status: str = ""


@dataclass(frozen=True, slots=True)
class Vis:
    """A Vaccine Information Statement given with a dose (OBX 69764-9 / 30956-7 triplets)."""

    document: Coded = field(default_factory=Coded)
    vaccine: Coded = field(default_factory=Coded)
    published: date | None = None
    presented: date | None = None


class Action(enum.StrEnum):
    """RXA-21 (HL7 0323); empty means add."""

    ADD = "A"
    UPDATE = "U"
    DELETE = "D"


class EventKind(enum.StrEnum):
    """What an order group records."""

    DOSE = "dose"
    REFUSAL = "refusal"
    OBSERVATION = "observation"  # RXA-5 998: immunity, serology, contraindication, ...


@dataclass(frozen=True, slots=True)
class Vaccination:
    """One order group (ORC/RXA/RXR/OBX): a dose, a refusal or a 998 observation group.

    `administered` is RXA-5 as sent; `cvx` is the normalised CVX code (from an NDC or CPT
    when the sender coded the product that way). For a refusal, `refusal_reason` is RXA-18;
    for an observation group, `observations` carries the clinical findings. Funding and VIS
    OBX are lifted into their own attributes; every other OBX stays in `observations`.
    """

    kind: EventKind = EventKind.DOSE
    key: EventKey = field(default_factory=EventKey)
    action: Action = Action.ADD
    administered: Coded = field(default_factory=Coded)
    cvx: str = ""
    ndc: str = ""
    cpt: str = ""
    administered_on: date | None = None
    administered_ts: str = ""
    amount: Decimal | None = None
    units: Coded = field(default_factory=Coded)
    information_source: Coded = field(default_factory=Coded)
    administering_provider: Provider = field(default_factory=Provider)
    administered_at: Site = field(default_factory=Site)
    lot_numbers: tuple[str, ...] = ()
    expiration_date: date | None = None
    manufacturer: Coded = field(default_factory=Coded)
    refusal_reason: Coded = field(default_factory=Coded)
    completion_status: str = ""
    route: Coded = field(default_factory=Coded)
    site: Coded = field(default_factory=Coded)
    ordering_provider: Provider = field(default_factory=Provider)
    entered_by: Provider = field(default_factory=Provider)
    funding_source: Coded = field(default_factory=Coded)
    funding_eligibility: Coded = field(default_factory=Coded)
    vis: tuple[Vis, ...] = ()
    observations: tuple[Observation, ...] = ()
    orc_sequence: int = 0
    rxa_sequence: int = 0

    @property
    def historical(self) -> bool:
        """RXA-9 information source other than 00 (new immunization record)."""
        source = self.information_source.code
        return bool(source) and source != "00"


@dataclass(frozen=True, slots=True)
class Vxu:
    """Everything a VXU carries that the registry keeps, mapped from one message."""

    organization: str
    patient: Patient
    settings: PatientSettings = field(default_factory=PatientSettings)
    responsible_persons: tuple[ResponsiblePerson, ...] = ()
    events: tuple[Vaccination, ...] = ()
    has_pd1: bool = False
