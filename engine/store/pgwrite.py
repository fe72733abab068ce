"""PostgreSQL: a patient and all its child rows written by one statement.

On PostgreSQL every statement is a network round trip that the single group-commit writer
waits for; a VXU's patient part (the patient row, identifiers, names, addresses, phones,
races/ethnicities, NK1s, PD1 settings) would be eight or more of them. Here it is one
statement of data-modifying CTEs whose rows arrive as JSON arrays (`json_to_recordset`), so
its text is fixed whatever the message holds and the server keeps it prepared.

The new patient's id is allocated beforehand (`nextval`, read together with the candidate
query), so neither statement returns anything the writer must wait for: in pipeline mode
(engine.store.precompiled) it travels with the message's remaining statements.

Semantics are those of engine.store.intake's per-table statements: a new patient gets its SR
identifier and the sender's identifiers (a key another transaction claimed raises a unique
violation, and the message re-runs and matches); a matched patient is updated attribute by
attribute (NULL keeps the stored value), gets the identifiers it lacks (ON CONFLICT DO
NOTHING), and has each part the message carries replaced. All CTEs of one statement share
one snapshot, so a part's DELETE never sees the rows its own INSERT adds; foreign keys are
checked at the end of the statement, after the patient row exists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import Dialect, Table, text

from engine.store import models as m
from engine.store.precompiled import Precompiled

_PATIENT = ("family_norm", "given_norm", "birth_date", "sex", "multiple_birth", "birth_order",
            "death_date", "death_indicator")
_SETTING = ("publicity_code", "publicity", "publicity_date", "protection", "protection_date",
            "registry_status", "registry_status_date")
# Parts: (CTE/parameter name, table, JSON columns, roles the replace deletes, or None = all)
_PARTS: tuple[tuple[str, Table, tuple[str, ...]], ...] = (
    ("names", m.table(m.PatientName), ("role", "position", "family", "given", "middle",
                                        "suffix", "prefix", "type_code")),
    ("addresses", m.table(m.PatientAddress), ("position", "street", "other", "city", "state",
                                               "zip", "country", "type_code", "county")),
    ("phones", m.table(m.PatientPhone), ("position", "use", "equipment", "email",
                                          "country_code", "area", "number", "extension")),
    ("codes", m.table(m.PatientCode), ("role", "position", "code", "text", "system",
                                        "alt_code", "alt_text", "alt_system")),
    ("nk1", m.table(m.ResponsiblePerson), ("position", "relationship_code", "detail")),
)
_IDENT = ("scope", "authority", "type_code", "value", "position")


def _type(table: Table, column: str, dialect: Dialect) -> str:
    """The column's SQL type without a length: over-long values fail at the INSERT, as they
    would without the cast, instead of being silently cut by it."""
    return re.sub(r"VARCHAR\(\d+\)", "VARCHAR", str(table.c[column].type.compile(dialect=dialect)))


def _q(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _recordset(param: str, table: Table, columns: Sequence[str], dialect: Dialect) -> str:
    defs = ", ".join(f'"{c}" {_type(table, c, dialect)}' for c in columns)
    return f"json_to_recordset(CAST(:{param} AS JSON)) AS x({defs})"


def _x(columns: Sequence[str]) -> str:
    return ", ".join(f'x."{c}"' for c in columns)


class PatientStatements:
    """The two statements: create a patient with everything, or update one with everything."""

    def __init__(self, dialect: Dialect) -> None:
        ident = m.table(m.PatientIdentifier)
        setting = m.table(m.PatientSetting)
        pat = m.table(m.Patient)
        set_rs = _recordset("setting", setting, _SETTING, dialect)
        upsert = ", ".join(f'"{c}" = excluded."{c}"' for c in (*_SETTING, "updated_at"))

        def types(c: str) -> str:
            return _type(pat, c, dialect)

        create = [
            "p AS (INSERT INTO patient (id, " + _q((*_PATIENT, "created_at", "updated_at",
                                                    "updated_by_org_id")) + ") VALUES ("
            "CAST(:new_id AS BIGINT), "
            + ", ".join(f"CAST(:{c} AS {types(c)})" for c in _PATIENT)
            + ", :now, :now, :org_id) RETURNING id)",
            "i AS (INSERT INTO patient_identifier (patient_id, " + _q(_IDENT) + ") "
            "SELECT p.id, '*', :authority, 'SR', CAST(p.id AS VARCHAR), -1 FROM p "
            "UNION ALL SELECT p.id, " + _x(_IDENT) + " FROM p, "
            + _recordset("idents", ident, _IDENT, dialect) + ")",
        ]
        for name, table, cols in _PARTS:
            create.append(f"{name} AS (INSERT INTO {table.name} (patient_id, {_q(cols)}) "
                          f"SELECT p.id, {_x(cols)} FROM p, "
                          f"{_recordset(name, table, cols, dialect)})")
        create.append(f"s AS (INSERT INTO patient_setting (patient_id, org_id, "
                      f"{_q(_SETTING)}, updated_at) SELECT p.id, :org_id, {_x(_SETTING)}, "
                      f":now FROM p, {set_rs})")
        self.create = Precompiled(text("WITH " + ",\n".join(create) + " SELECT id FROM p"),
                                  dialect, rows=False)

        update = [
            "u AS (UPDATE patient SET updated_at = :now, updated_by_org_id = :org_id, "
            + ", ".join(f'"{c}" = COALESCE(CAST(:{c} AS {types(c)}), "{c}")' for c in _PATIENT)
            + " WHERE id = :pid)",
            "i AS (INSERT INTO patient_identifier (patient_id, " + _q(_IDENT) + ") "
            "SELECT :pid, " + _x(_IDENT) + " FROM "
            + _recordset("idents", ident, _IDENT, dialect) + " ON CONFLICT DO NOTHING)",
        ]
        for name, table, cols in _PARTS:
            # Replace what the message carries: the roles present (names, codes), or the
            # whole part when it has no roles and the message has rows for it.
            scope = ("role = ANY(CAST(:" + name + "_roles AS VARCHAR[]))" if "role" in cols
                     else f"CAST(:{name}_replace AS BOOLEAN)")
            update.append(f"d_{name} AS (DELETE FROM {table.name} WHERE patient_id = :pid "
                          f"AND {scope})")
            update.append(f"{name} AS (INSERT INTO {table.name} (patient_id, {_q(cols)}) "
                          f"SELECT :pid, {_x(cols)} FROM "
                          f"{_recordset(name, table, cols, dialect)})")
        update.append(f"s AS (INSERT INTO patient_setting (patient_id, org_id, "
                      f"{_q(_SETTING)}, updated_at) SELECT :pid, :org_id, {_x(_SETTING)}, "
                      f":now FROM {set_rs} ON CONFLICT (patient_id, org_id) DO UPDATE SET "
                      f"{upsert})")
        self.update = Precompiled(text("WITH " + ",\n".join(update) + " SELECT 1"), dialect,
                                  rows=False)


PATIENT_COLUMNS = _PATIENT
SETTING_COLUMNS = _SETTING
PARTS = tuple((name, cols) for name, _table, cols in _PARTS)
IDENT_COLUMNS = _IDENT


class EventStatements:
    """A message's new events, their ORC-3 keys and their OBX rows in one statement.

    The rows arrive as JSON arrays (built on the pipeline thread, see
    engine.store.intake.EventPlan.pg_row) with the event ids allocated ahead, so the statement
    returns nothing the writer waits for: with the patient statement, a new patient's whole
    message is one round trip after the candidate query.
    """

    # immunization_event columns that come from the message (engine.store.intake.event_values)
    EVENT_COLUMNS = ("kind", "cvx", "ndc", "cpt", "vaccine_groups", "administered_on",
                     "administered_ts", "amount", "lot_number", "expiration_date", "mvx",
                     "route_code", "site_code", "information_source", "completion_status",
                     "refusal_reason", "funding_eligibility", "funding_source",
                     "facility_code", "detail")
    OBSERVATION_COLUMNS = ("position", "code", "value_type", "value", "value_code", "sub_id",
                           "observed_on", "detail")

    def __init__(self, dialect: Dialect) -> None:
        ev, key, obs = (m.table(m.ImmunizationEvent), m.table(m.EventKey),
                        m.table(m.EventObservation))
        cols = self.EVENT_COLUMNS
        obs_cols = self.OBSERVATION_COLUMNS
        parts = [
            "e AS (INSERT INTO immunization_event (id, patient_id, org_id, status, created_at, "
            f"updated_at, deleted_at, version, {_q(cols)}) SELECT x.id, "
            "CAST(:patient_id AS BIGINT), CAST(:org_id AS BIGINT), "
            f"'active', :now, :now, NULL, 1, {_x(cols)} FROM "
            + _recordset("events", ev, ("id", *cols), dialect) + ")",
            "k AS (INSERT INTO event_key (org_id, authority, key_id, event_id) SELECT "
            "CAST(:org_id AS BIGINT), "
            "x.authority, x.key_id, x.event_id FROM "
            + _recordset("keys", key, ("authority", "key_id", "event_id"), dialect) + ")",
            f"o AS (INSERT INTO event_observation (event_id, {_q(obs_cols)}) SELECT "
            f"x.event_id, {_x(obs_cols)} FROM "
            + _recordset("observations", obs, ("event_id", *obs_cols), dialect) + ")",
        ]
        self.insert = Precompiled(text("WITH " + ",\n".join(parts) + " SELECT 1"), dialect,
                                  rows=False)
