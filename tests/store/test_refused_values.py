"""Values no store column can hold get the same answer on SQLite and PostgreSQL.

A text longer than its column, or containing NUL, is decided before the database sees it
(engine.store.screen): in a field the registry can do without it is left out, the rest is
stored, and the ACK warns (W 102, 0533 code 4, at the field); in a field the message cannot be stored without it
is AE (E 102 at the field) and nothing but the message log row is stored.
"""

from __future__ import annotations

import pytest

from tests.store.conftest import Registry
from tests.store.messages import Dose, vxu


def answer(response: bytes) -> tuple[str, list[tuple[str, str, str, str]]]:
    """MSA-1 and (ERR-2 location, ERR-3 code, ERR-4 severity, ERR-5 code) of each ERR."""
    segments = response.decode().split("\r")
    ack = next(s for s in segments if s.startswith("MSA|")).split("|")[1]
    return ack, [(f[2], f[3].split("^")[0], f[4], f[5].split("^")[0])
                 for s in segments if s.startswith("ERR|") for f in [s.split("|")]]


def only_patient(registry: Registry) -> object:
    [pid] = registry.repo.patient_ids()
    return registry.repo.load_patient(pid)


# MSA-1 for a message whose worst finding is a warning (the default policy, CDC IG: AE; the
# ERR severity W tells the sender the data was stored).
WARNED = "AE"
LONG_400 = "A" * 401
LONG_64 = "7" * 65


# --- fields the registry can do without: left out, W 102, the rest stored -----------------

@pytest.mark.parametrize("change,location", [
    (("Testfamily^Testgiven^M^", f"Testfamily^Testgiven^{LONG_400}^"), "PID^1^5^1^3"),
    (("|1 Main St^", "|1 Ma\x00in St^"), "PID^1^11^1^1"),
    (("^PRN^PH^^^555^5551234|", f"^PRN^PH^^^555^{LONG_64}|"), "PID^1^13^1^7"),
    (("|F||2106-3", "|FEMALE-LONGER||2106-3"), "PID^1^8"),
], ids=["middle-name-over-400", "nul-in-street", "phone-number-over-64", "sex-over-8"])
def test_optional_patient_value_is_left_out_with_a_warning(
        registry: Registry, change: tuple[str, str], location: str) -> None:
    """The patient and dose are stored without that one value; W 102 at it."""
    message = vxu("V1").replace(*change, 1)
    assert message != vxu("V1")
    assert answer(registry.send(message)) == (WARNED, [(location, "102", "W", "4")])
    stored = only_patient(registry).patient  # type: ignore[attr-defined]
    assert stored.names[0].family == "Testfamily"
    assert stored.names[0].middle in ("M", "")
    assert [a.street for a in stored.addresses] in (["1 Main St"], [""])
    assert all(len(p.number) <= 64 for p in stored.phones)
    assert stored.sex in ("F", "")
    assert registry.counts()["immunization_event"] == 1


def test_an_over_long_lot_number_is_left_out_not_cut(registry: Registry) -> None:
    """A lot number longer than the registry stores is not silently truncated: the dose is
    stored without a lot and the ACK says so at RXA-15 of that order group."""
    message = vxu("V2", doses=[Dose(key="K1"), Dose(key="K2", cvx="03", lot="L" * 65)])
    assert answer(registry.send(message)) == (WARNED, [("RXA^2^15^1", "102", "W", "4")])
    lots = sorted(e.vaccination.lot_numbers for e in only_patient(  # type: ignore[attr-defined]
        registry).active_events())
    assert lots == [(), ("LOT1",)]


def test_a_nul_in_an_obx_value_is_left_out(registry: Registry) -> None:
    """An OBX value with NUL is not stored; the warning points at the order group's RXA."""
    obx = "OBX|1|ST|30973-2^Dose number^LN|1|fir\x00st||||||F"
    message = vxu("V3", doses=[Dose(key="K1", obx=[obx])])
    assert answer(registry.send(message)) == (WARNED, [("RXA^1", "102", "W", "4")])
    [event] = only_patient(registry).active_events()  # type: ignore[attr-defined]
    assert [o.value for o in event.vaccination.observations] == [""]


# --- values the message cannot be stored without: AE, nothing stored -----------------------

@pytest.mark.parametrize("message,location", [
    (vxu("R1", mr="M" * 201), "PID^1^3^1^1"),
    (vxu("R2", family="F" * 401), "PID^1^5^1^1"),
    (vxu("R3", given="G\x00G"), "PID^1^5^1^2"),
    (vxu("R4", doses=[Dose(cvx="0\x008")]), "RXA^1^5^1^1"),
    (vxu("R5", doses=[Dose(key="K" * 201)]), "ORC^1^3^1^1"),
    (vxu("R6", doses=[Dose(key="K1"), Dose(key="K2", on="20240115" + "0" * 60)]), "RXA^2^3"),
], ids=["identifier-over-200", "family-over-400", "nul-in-given", "nul-in-vaccine-code",
        "order-key-over-200", "admin-time-over-64"])
def test_required_value_refused_answers_ae_and_stores_nothing(
        registry: Registry, message: str, location: str) -> None:
    """AE with E 102 at the value's location; only the message log row is written, so a
    corrected resend with a new MSH-10 is stored normally."""
    before = registry.data_counts()
    ack, errors = answer(registry.send(message))
    assert ack == "AE"
    assert (location, "102", "E", "4") in errors
    assert registry.data_counts() == before
    assert registry.counts()["message_log"] == 1


def test_same_refused_message_gets_the_same_bytes_again(registry: Registry) -> None:
    """A retransmission of a refused message is answered from the log, byte for byte."""
    message = vxu("R7", mr="M" * 201)
    first = registry.send(message)
    assert answer(first)[0] == "AE"
    assert registry.send(message) == first
    assert registry.counts()["message_log"] == 1


def test_a_value_within_every_limit_is_stored_exactly(registry: Registry) -> None:
    """Values at exactly their column's length are neither refused nor cut."""
    message = vxu("L1", mr="M" * 200, family="F" * 200, doses=[Dose(lot="L" * 64)])
    assert answer(registry.send(message)) == ("AA", [])
    stored = only_patient(registry)
    assert stored.patient.names[0].family == "F" * 200  # type: ignore[attr-defined]
    [event] = stored.active_events()  # type: ignore[attr-defined]
    assert event.vaccination.lot_numbers == ("L" * 64,)


def test_a_nul_in_the_control_id_is_refused_alike_and_replayed(registry: Registry) -> None:
    """MSH-10 keys the message log, whose PostgreSQL columns cannot hold NUL: the message is
    AE at MSH-10 on both backends, stores nothing, and its retransmission gets the same
    bytes back from the log."""
    message = vxu("C\x00X")
    first = registry.send(message)
    assert answer(first) == ("AE", [("MSH^1^10", "102", "E", "4")])
    assert registry.data_counts() == dict.fromkeys(registry.data_counts(), 0)
    assert registry.send(message) == first
    assert registry.counts()["message_log"] == 1


def test_a_short_name_whose_normalised_form_is_too_long_is_refused_alike(
        registry: Registry) -> None:
    """14 characters, 42 bytes: within every raw bound, but NFKD makes U+FDFA 18 letters, so
    the normalised family name matching uses (210 letters) fits no column; both backends
    answer the same AE instead of SQLite storing it and PostgreSQL refusing it."""
    message = vxu("N1", family="\ufdfa" * 14)
    ack, errors = answer(registry.send(message))
    assert ack == "AE"
    assert ("PID^1^5^1^1", "102", "E", "4") in errors
    assert registry.data_counts()["patient"] == 0
