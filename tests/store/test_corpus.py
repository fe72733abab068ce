"""Replaying the public NIST and AIRA VXUs stores what they carry, field by field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from engine.hl7 import decode, parse
from engine.mapping import VxuMapper
from tests.store.conftest import SHARED, Registry, make_registry

FILES = sorted([*(SHARED / "messages" / "nist").glob("*VXU*.hl7"),
                *(SHARED / "messages" / "aira").glob("VXU*.hl7")]) if SHARED.is_dir() else []


def _validator() -> Any:
    try:
        from engine.validation import Validator
    except ImportError:
        return None
    return Validator.load()


def _comparable(event: Any) -> Any:
    return dataclasses.replace(event, orc_sequence=0, rxa_sequence=0)


@pytest.mark.skipif(not FILES, reason="../shared/messages is not present")
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_replayed_vxu_reads_back_field_by_field(database_url: str, path: Path) -> None:
    """Every patient attribute and order group the message carries is stored exactly."""
    validator = _validator()
    registry: Registry = make_registry(database_url, validator=validator)
    try:
        payload = path.read_bytes()
        response = registry.send(payload).decode()
        ack = next(s for s in response.split("\r") if s.startswith("MSA|")).split("|")[1]
        message = parse(decode(payload))
        result = validator.validate(message, registry.pipeline.today()) if validator else None
        mapped = VxuMapper.load().map(message, result.dropped_segments if result else frozenset(),
                                      result.emptied_fields if result else frozenset())
        if ack == "AR" or (result is not None and result.rejected) or mapped.vxu is None:
            assert registry.counts()["patient"] == 0
            return
        [patient_id] = registry.repo.patient_ids()
        stored = registry.repo.load_patient(patient_id)
        expected = mapped.vxu
        assert set(stored.patient.identifiers) == set(expected.patient.identifiers)
        assert dataclasses.replace(stored.patient, identifiers=()) == dataclasses.replace(
            expected.patient, identifiers=())
        assert stored.responsible_persons == expected.responsible_persons
        if expected.has_pd1 and expected.settings:
            assert stored.settings[expected.organization] == expected.settings
        assert [_comparable(e.vaccination) for e in stored.events] == [
            _comparable(e) for e in expected.events]

        # Independent of the mapper: raw HL7 values against what the store returns.
        pid = message.first("PID")
        assert pid is not None
        assert stored.patient.names[0].family == pid.value(5, 1, 1)
        assert stored.patient.birth_date is not None
        assert stored.patient.birth_date.strftime("%Y%m%d") == pid.value(7)[:8]
        rxas = [s for i, s in enumerate(message.segments)
                if s.id == "RXA" and not (result and i in result.dropped_segments)]
        assert [e.vaccination.administered.code for e in stored.events] == [
            r.value(5) for r in rxas if r.value(5) and r.value(3)]
        assert [e.vaccination.lot_numbers[:1] for e in stored.events] == [
            ((r.value(15),) if r.value(15) else ()) for r in rxas if r.value(5) and r.value(3)]
    finally:
        registry.bundle.close()
