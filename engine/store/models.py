"""SQLAlchemy 2 typed models of the registry store (the schema Alembic migrates).

Owns the tables and the invariants the database enforces, so several engine processes
sharing one PostgreSQL stay correct without coordinating in memory:

* `message_log`: unique (sender, replay_key) — one processed message per sender + MSH-10.
  Messages answered AR are logged with replay_key NULL (they did not consume the id).
* `patient_identifier`: unique (scope, authority, type_code, value) — an MR is scoped to the
  organization that sent it (scope = org code); our own SR id has scope "*".
* `event_key`: unique (org_id, authority, key_id) — an ORC-3 is scoped to its owning org.
* `patient_setting`: unique (patient_id, org_id) — PD1 as set by each organization.

Searchable values are columns (codes, dates, normalised names); full-fidelity composites that
are only ever read back whole (XCN providers, LA2 sites, CE triplets with alternates, NK1
details) are JSON documents in `detail`, written from and read into `engine.domain` values by
`engine.store.repository`. ORM classes never leave `engine/store/`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
Id = BigInteger().with_variant(Integer(), "sqlite")
Code = String(64)
Txt = String(400)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Organization(Base):
    """A CAIR organization or site, keyed by its code (MSH-22 / MSH-4 / RXA-11.4)."""

    __tablename__ = "organization"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    code: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Patient(Base):
    """One registry patient (the consolidated record); multi-valued parts in child tables."""

    __tablename__ = "patient"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    family_norm: Mapped[str] = mapped_column(String(200))
    given_norm: Mapped[str] = mapped_column(String(200))
    birth_date: Mapped[date | None] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(8), default="")
    multiple_birth: Mapped[str] = mapped_column(String(8), default="")
    birth_order: Mapped[int | None] = mapped_column(Integer)
    death_date: Mapped[date | None] = mapped_column(Date)
    death_indicator: Mapped[str] = mapped_column(String(8), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by_org_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    __table_args__ = (Index("ix_patient_match", "birth_date", "family_norm", "given_norm"),)


class PatientIdentifier(Base):
    """PID-3: an identifier within its scope (sending org code, or "*" for our SR id)."""

    __tablename__ = "patient_identifier"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    scope: Mapped[str] = mapped_column(String(200))
    authority: Mapped[str] = mapped_column(String(200))
    type_code: Mapped[str] = mapped_column(Code)
    value: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (UniqueConstraint("scope", "authority", "type_code", "value",
                                       name="uq_patient_identifier_key"),)


class PatientName(Base):
    """PID-5 names (all repetitions, aliases included) and PID-6 mother's maiden names."""

    __tablename__ = "patient_name"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # "patient" | "mother_maiden"
    position: Mapped[int] = mapped_column(Integer)
    family: Mapped[str] = mapped_column(Txt)
    given: Mapped[str] = mapped_column(Txt)
    middle: Mapped[str] = mapped_column(Txt)
    suffix: Mapped[str] = mapped_column(Code)
    prefix: Mapped[str] = mapped_column(Code)
    type_code: Mapped[str] = mapped_column(Code)


class PatientAddress(Base):
    """PID-11 addresses."""

    __tablename__ = "patient_address"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    street: Mapped[str] = mapped_column(Txt)
    other: Mapped[str] = mapped_column(Txt)
    city: Mapped[str] = mapped_column(Txt)
    state: Mapped[str] = mapped_column(Code)
    zip: Mapped[str] = mapped_column(Code)
    country: Mapped[str] = mapped_column(Code)
    type_code: Mapped[str] = mapped_column(Code)
    county: Mapped[str] = mapped_column(Code)


class PatientPhone(Base):
    """PID-13 telephone numbers and e-mail addresses."""

    __tablename__ = "patient_phone"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    use: Mapped[str] = mapped_column(Code)
    equipment: Mapped[str] = mapped_column(Code)
    email: Mapped[str] = mapped_column(Txt)
    country_code: Mapped[str] = mapped_column(Code)
    area: Mapped[str] = mapped_column(Code)
    number: Mapped[str] = mapped_column(Code)
    extension: Mapped[str] = mapped_column(Code)


class PatientCode(Base):
    """PID-10 races and PID-22 ethnicities (CE, all repetitions)."""

    __tablename__ = "patient_code"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # "race" | "ethnicity"
    position: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(Code)
    text: Mapped[str] = mapped_column(Txt)
    system: Mapped[str] = mapped_column(Code)
    alt_code: Mapped[str] = mapped_column(Code)
    alt_text: Mapped[str] = mapped_column(Txt)
    alt_system: Mapped[str] = mapped_column(Code)


class ResponsiblePerson(Base):
    """NK1: relationship as columns, names/addresses/phones as a JSON document."""

    __tablename__ = "responsible_person"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    relationship_code: Mapped[str] = mapped_column(Code)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class PatientSetting(Base):
    """PD1 as set by one organization: publicity, protection (and who set it), status."""

    __tablename__ = "patient_setting"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"))
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    publicity_code: Mapped[str] = mapped_column(Code)
    publicity: Mapped[dict[str, Any]] = mapped_column(JSON)
    publicity_date: Mapped[date | None] = mapped_column(Date)
    protection: Mapped[str] = mapped_column(String(8))
    protection_date: Mapped[date | None] = mapped_column(Date)
    registry_status: Mapped[str] = mapped_column(String(8))
    registry_status_date: Mapped[date | None] = mapped_column(Date)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("patient_id", "org_id", name="uq_patient_setting_org"),)


class ImmunizationEvent(Base):
    """One order group as reported by its owning org: a dose, a refusal or a 998 group.

    `status` is "active" or "deleted" (RXA-21 D keeps the row for audit; histories skip it).
    """

    __tablename__ = "immunization_event"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"))
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    cvx: Mapped[str] = mapped_column(Code)
    ndc: Mapped[str] = mapped_column(Code)
    cpt: Mapped[str] = mapped_column(Code)
    vaccine_groups: Mapped[str] = mapped_column(String(200))
    administered_on: Mapped[date | None] = mapped_column(Date)
    administered_ts: Mapped[str] = mapped_column(Code)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))
    lot_number: Mapped[str] = mapped_column(Code)
    expiration_date: Mapped[date | None] = mapped_column(Date)
    mvx: Mapped[str] = mapped_column(Code)
    route_code: Mapped[str] = mapped_column(Code)
    site_code: Mapped[str] = mapped_column(Code)
    information_source: Mapped[str] = mapped_column(Code)
    completion_status: Mapped[str] = mapped_column(String(8))
    refusal_reason: Mapped[str] = mapped_column(Code)
    funding_eligibility: Mapped[str] = mapped_column(Code)
    funding_source: Mapped[str] = mapped_column(Code)
    facility_code: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer)
    __table_args__ = (Index("ix_event_patient", "patient_id", "administered_on"),)


class EventObservation(Base):
    """An OBX under an order group (VIS and funding OBX are lifted into the event)."""

    __tablename__ = "event_observation"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("immunization_event.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(Code)
    value_type: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(Text)
    value_code: Mapped[str] = mapped_column(Code)
    sub_id: Mapped[str] = mapped_column(Code)
    observed_on: Mapped[date | None] = mapped_column(Date)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventKey(Base):
    """ORC-3 id + authority → event, scoped to the owning org (several keys may share one)."""

    __tablename__ = "event_key"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    authority: Mapped[str] = mapped_column(String(200))
    key_id: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[int] = mapped_column(ForeignKey("immunization_event.id"), index=True)
    __table_args__ = (UniqueConstraint("org_id", "authority", "key_id", name="uq_event_key"),)


class MessageLog(Base):
    """The store of record: every inbound message, its outcome and the exact response bytes."""

    __tablename__ = "message_log"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sender: Mapped[str] = mapped_column(String(400))
    control_id: Mapped[str] = mapped_column(String(200))
    replay_key: Mapped[str | None] = mapped_column(String(200))
    content_sha256: Mapped[str] = mapped_column(String(64))
    message_type: Mapped[str] = mapped_column(String(16))
    org_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    processing_ms: Mapped[float | None] = mapped_column(Numeric(12, 3))
    ack_code: Mapped[str] = mapped_column(String(8))
    error_codes: Mapped[str] = mapped_column(String(400))
    response: Mapped[bytes] = mapped_column(LargeBinary)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    __table_args__ = (UniqueConstraint("sender", "replay_key", name="uq_message_log_replay"),
                      Index("ix_message_log_received", "received_at"))


def table(model: type[Base]) -> Table:
    """A model's Core table, typed as one (for statements built outside the ORM)."""
    return cast(Table, model.__table__)


__all__ = ["Base", "EventKey", "EventObservation", "ImmunizationEvent", "MessageLog",
           "Organization", "Patient", "PatientAddress", "PatientCode", "PatientIdentifier",
           "PatientName", "PatientPhone", "PatientSetting", "ResponsiblePerson", "table"]
