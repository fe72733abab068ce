"""VXU intake against a real store: idempotency, updates/deletes, matching, big and odd input."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal

import pytest

from engine.errors import Issue, Location, Severity
from engine.pipeline import Request, Respond
from tests.store.conftest import Registry
from tests.store.messages import Dose, vxu


def msa(response: bytes) -> str:
    return next(s for s in response.decode().split("\r") if s.startswith("MSA|")).split("|")[1]


def errs(response: bytes) -> list[tuple[str, str]]:
    """(ERR-2 location, ERR-3 code) of each ERR segment."""
    return [(f[2], f[3].split("^")[0]) for s in response.decode().split("\r")
            if s.startswith("ERR|") for f in [s.split("|")]]


def only_patient(reg: Registry) -> object:
    ids = reg.repo.patient_ids()
    assert len(ids) == 1
    return reg.repo.load_patient(ids[0])


def test_accepted_vxu_is_stored_and_answered_aa(registry: Registry) -> None:
    """A valid VXU answers AA and stores its patient, dose, NK1 and PD1 settings."""
    assert msa(registry.send(vxu("C1", doses=[Dose(obx=["VFC"])]))) == "AA"
    stored = only_patient(registry)
    [event] = stored.active_events()  # type: ignore[attr-defined]
    assert event.vaccination.cvx == "08"
    assert event.vaccination.funding_eligibility.code == "V02"
    assert stored.settings["ORG-A"].protection == "N"  # type: ignore[attr-defined]
    assert stored.responsible_persons[0].relationship.code == "MTH"  # type: ignore[attr-defined]


def test_retransmission_returns_identical_bytes_and_writes_nothing(registry: Registry) -> None:
    """The same message again gets the stored response byte for byte; no row changes."""
    message = vxu("C1")
    first = registry.send(message)
    before = registry.counts()
    assert registry.send(message) == first
    assert registry.send(message.replace("\r", "\r\n")) == first
    assert registry.counts() == before


def test_retransmissions_are_counted_as_replays(registry: Registry) -> None:
    """A replayed response is counted as iz_messages{ack_code="replay"}, not as a new AA."""
    message = vxu("C1")
    registry.send(message)
    registry.send(message)
    metrics = registry.pipeline.metrics.registry
    labels = {"message_type": "VXU^V04"}
    assert metrics.get_sample_value("iz_messages_total", {**labels, "ack_code": "AA"}) == 1
    assert metrics.get_sample_value("iz_messages_total", {**labels, "ack_code": "replay"}) == 1


def test_same_control_id_other_content_is_205_and_stores_nothing(registry: Registry) -> None:
    """A reused MSH-10 with different content answers AE 205 and stores nothing."""
    registry.send(vxu("C1"))
    before = registry.counts()
    response = registry.send(vxu("C1", doses=[Dose(key="OTHER", cvx="03")]))
    assert msa(response) == "AE"
    assert errs(response) == [("MSH^1^10", "205")]
    assert registry.counts() == before


def test_five_concurrent_retransmissions_store_one_record(registry: Registry) -> None:
    """Five copies on five threads (five connections) → one record, five identical answers."""
    message = vxu("C-CONC", doses=[Dose(key="K1"), Dose(key="K2", cvx="03")])
    barrier = threading.Barrier(5)
    answers: list[bytes] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        answer = registry.send(message)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=send) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(answers)) == 1 and msa(answers[0]) == "AA"
    counts = registry.counts()
    assert (counts["patient"], counts["immunization_event"], counts["message_log"]) == (1, 2, 1)


def test_rxa21_update_replaces_the_whole_event(registry: Registry) -> None:
    """RXA-21 U with a known ORC-3 replaces the event: new values, OBX not resent are gone."""
    registry.send(vxu("C1", doses=[Dose(key="K1", lot="OLD", obx=["VFC"])]))
    response = registry.send(vxu("C2", doses=[Dose(key="K1", lot="NEW", action="U")]))
    assert msa(response) == "AA"
    [event] = only_patient(registry).active_events()  # type: ignore[attr-defined]
    assert event.vaccination.lot_numbers == ("NEW",)
    assert not event.vaccination.funding_eligibility


def test_add_with_known_orc3_replaces_instead_of_duplicating(registry: Registry) -> None:
    """RXA-21 A with an ORC-3 the org already sent is the same event, replaced."""
    registry.send(vxu("C1", doses=[Dose(key="K1", on="20240101")]))
    registry.send(vxu("C2", doses=[Dose(key="K1", on="20240102")]))
    [event] = only_patient(registry).active_events()  # type: ignore[attr-defined]
    assert event.vaccination.administered_on.isoformat() == "2024-01-02"


def test_rxa21_delete_marks_deleted_and_keeps_row(registry: Registry) -> None:
    """RXA-21 D hides the event from histories but keeps it for audit."""
    registry.send(vxu("C1", doses=[Dose(key="K1"), Dose(key="K2", cvx="03")]))
    assert msa(registry.send(vxu("C2", doses=[Dose(key="K1", action="D")]))) == "AA"
    stored = only_patient(registry)
    assert [e.keys[0].id for e in stored.active_events()] == ["K2"]  # type: ignore[attr-defined]
    assert [e.status for e in stored.events] == ["deleted", "active"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("action", ["U", "D"], ids=["update", "delete"])
def test_unknown_orc3_for_update_or_delete_is_204(registry: Registry, action: str) -> None:
    """U/D of an ORC-3 never sent by this org → AE 204 at ORC^n^3; other groups are stored."""
    response = registry.send(vxu("C1", doses=[Dose(key="K1"),
                                               Dose(key="NOPE", cvx="03", action=action)]))
    assert msa(response) == "AE"
    assert errs(response) == [("ORC^2^3", "204")]
    assert [e.keys[0].id for e in only_patient(registry).events] == ["K1"]  # type: ignore[attr-defined]


def test_orc3_is_scoped_to_the_owning_org(registry: Registry) -> None:
    """Another org cannot delete an event by reusing its ORC-3: 204 for them."""
    registry.send(vxu("C1", doses=[Dose(key="K1")]))
    response = registry.send(vxu("C1", org="ORG-B", doses=[Dose(key="K1", action="D")]))
    assert errs(response) == [("ORC^1^3", "204")]


def test_vxu_is_not_the_full_history(registry: Registry) -> None:
    """A later VXU that omits an earlier dose does not delete it."""
    registry.send(vxu("C1", doses=[Dose(key="K1")]))
    registry.send(vxu("C2", doses=[Dose(key="K2", cvx="03")]))
    assert len(only_patient(registry).active_events()) == 2  # type: ignore[attr-defined]


def test_unkeyed_resend_of_same_dose_is_not_stored_twice(registry: Registry) -> None:
    """The same dose resent under a new control id without a usable ORC-3 stays one dose."""
    registry.send(vxu("C1", doses=[Dose(key="9999")]))
    registry.send(vxu("C2", doses=[Dose(key="9999")]))
    assert len(only_patient(registry).active_events()) == 1  # type: ignore[attr-defined]


def test_administered_record_takes_precedence_over_historical(registry: Registry) -> None:
    """Same org, same vaccine group and date: the administered record's content wins."""
    registry.send(vxu("C1", doses=[Dose(key="H1", cvx="45", source="01", lot="")]))
    registry.send(vxu("C2", doses=[Dose(key="A1", cvx="08", source="00", lot="L9")]))
    [event] = only_patient(registry).active_events()  # type: ignore[attr-defined]
    assert (event.vaccination.cvx, event.vaccination.lot_numbers) == ("08", ("L9",))
    assert {k.id for k in event.keys} == {"H1", "A1"}


def test_refusal_is_stored_with_its_reason(registry: Registry) -> None:
    """RXA-20 RE + RXA-18 is stored as a refusal, not a dose."""
    registry.send(vxu("C1", doses=[Dose(key="9999", cvx="03", refusal=True)]))
    [event] = only_patient(registry).events  # type: ignore[attr-defined]
    assert (event.vaccination.kind.value, event.vaccination.refusal_reason.code) == ("refusal", "00")


def test_history_of_300_doses_in_one_vxu(registry: Registry) -> None:
    """A 300-dose history in one message is stored completely in one transaction."""
    doses = [Dose(key=f"K{i}", cvx="88", on=f"{1900 + i}0101", source="01", lot="")
             for i in range(300)]
    assert msa(registry.send(vxu("BIG", doses=doses))) == "AA"
    assert len(only_patient(registry).active_events()) == 300  # type: ignore[attr-defined]


@pytest.mark.parametrize("family,given", [("Ñúñez", "José"), ("Müller", "Jürgen"),
                                          ("王", "小明"), ("O'Brien", "Zoë")],
                         ids=["spanish", "german", "chinese", "apostrophe"])
def test_unicode_names_round_trip_exactly(registry: Registry, family: str, given: str) -> None:
    """UTF-8 names come back from the store exactly as sent."""
    message = vxu("U1", family=family, given=given).replace(
        "|||ER|AL|||||Z22", "|||ER|AL|||UNICODE UTF-8||Z22")
    assert msa(registry.send(message.encode("utf-8"))) == "AA"
    name = only_patient(registry).patient.names[0]  # type: ignore[attr-defined]
    assert (name.family, name.given) == (family, given)


def test_same_mr_from_two_senders_is_two_patients(registry: Registry) -> None:
    """MR is scoped to its sending org: two clinics' MR 100 are two different people."""
    registry.send(vxu("C1", org="ORG-A", mr="100", family="Alpha", given="Ann"))
    registry.send(vxu("C1", org="ORG-B", mr="100", family="Beta", given="Bob", sex="M",
                      dob="20110101"))
    assert len(registry.repo.patient_ids()) == 2
    assert len(registry.repo.find_patients("ORG-A", "ORG-A-MRN", "MR", "100")) == 1
    assert len(registry.repo.find_patients("ORG-B", "ORG-A-MRN", "MR", "100")) == 1


def test_same_mr_from_same_sender_is_the_same_patient(registry: Registry) -> None:
    """A second VXU with the org's MR updates that patient even if the name changed."""
    registry.send(vxu("C1", family="Before"))
    registry.send(vxu("C2", family="After", doses=[Dose(key="K2", cvx="03")]))
    stored = only_patient(registry)
    assert stored.patient.names[0].family == "After"  # type: ignore[attr-defined]


def test_exact_demographics_match_across_orgs(registry: Registry) -> None:
    """A patient reported by a second org with its own MR matches on name + birth date + sex."""
    registry.send(vxu("C1", org="ORG-A", mr="A1"))
    registry.send(vxu("C1", org="ORG-B", mr="B1", doses=[Dose(key="K9", cvx="03")]))
    stored = only_patient(registry)
    assert {i.value for _, i in stored.identifiers} >= {"A1", "B1"}  # type: ignore[attr-defined]


def test_twins_by_birth_order_are_two_patients(registry: Registry) -> None:
    """Same name and birth date but different birth order do not match."""
    base = ("PID|1||{mr}^^^X^MR||Twin^Kid^^^^^L||20200101|F||||||||||||||||Y|{order}")
    registry.send(vxu("C1", org="ORG-A", pid=base.format(mr="T1", order=1)))
    registry.send(vxu("C1", org="ORG-B", pid=base.format(mr="T2", order=2)))
    assert len(registry.repo.patient_ids()) == 2


@pytest.mark.parametrize("pid,location", [
    ("PID|1||||Fam^Giv^^^^^L||20200101|F", "PID^1^3"),
    ("PID|1||MR1^^^A^MR||||20200101|F", "PID^1^5"),
    ("PID|1||MR1^^^A^MR||Fam^Giv^^^^^L|||F", "PID^1^7"),
], ids=["no-PID-3", "no-PID-5", "no-PID-7"])
def test_missing_patient_essentials_store_only_the_log(registry: Registry, pid: str,
                                                       location: str) -> None:
    """Without PID-3/5/7 nothing is stored but the log row; AE 101 says where."""
    response = registry.send(vxu("C1", pid=pid))
    assert msa(response) == "AE"
    assert (location, "101") in errs(response)
    counts = registry.counts()
    assert counts["patient"] == 0 and counts["message_log"] == 1


def test_group_without_vaccine_code_is_skipped_with_101(registry: Registry) -> None:
    """An order group missing RXA-5 is not stored; the rest of the message is."""
    message = vxu("C1", doses=[Dose(key="K1"), Dose(key="K2", cvx="")])
    response = registry.send(message)
    assert ("RXA^2^5", "101") in errs(response)
    assert len(only_patient(registry).events) == 1  # type: ignore[attr-defined]


def test_validation_rejection_stores_only_the_log(registry: Registry) -> None:
    """When validation rejects the message, only the message log row is written."""
    from engine.validation import ValidationResult

    issue = Issue(101, Severity.ERROR, Location("PID", 1, 5), "missing", 7, "test.rule")
    handler = registry.bundle.handlers["VXU"]

    class Rejecting:
        def handle(self, request: Request, respond: Respond) -> bytes:
            rejected = ValidationResult("Z22", (issue,), True, frozenset(), frozenset())
            return handler.handle(Request(request.payload, request.header, request.message,
                                          rejected, request.received_at), respond)

    registry.pipeline.handlers["VXU"] = Rejecting()
    assert msa(registry.send(vxu("C1"))) == "AE"
    counts = registry.counts()
    assert counts["patient"] == 0 and counts["message_log"] == 1


def test_amount_and_dates_are_typed(registry: Registry) -> None:
    """RXA-6 is a decimal and RXA-16 a date after the round trip."""
    registry.send(vxu("C1"))
    [event] = only_patient(registry).events  # type: ignore[attr-defined]
    assert event.vaccination.amount == Decimal("0.5")
    assert event.vaccination.expiration_date.isoformat() == "2030-12-31"


def test_message_log_keeps_outcome_and_exact_response(registry: Registry) -> None:
    """The log row holds sender, control id, outcome, raw content and the exact response."""
    message = vxu("C1", doses=[Dose(key="X", action="D")])
    response = registry.send(message)
    [row] = registry.repo.message_log("EHR|ORG-A", "C1")
    assert (row["ack_code"], row["error_codes"]) == ("AE", "204")
    assert bytes(row["response"]) == response
    assert bytes(row["payload"]) == message.encode()


def test_rejected_ar_does_not_consume_the_control_id(registry: Registry) -> None:
    """After an AR (bad version) the sender may fix the message and resend the same MSH-10."""
    bad = vxu("C1").replace("|P|2.5.1|", "|P|2.3.1|")
    assert msa(registry.send(bad)) == "AR"
    assert msa(registry.send(vxu("C1"))) == "AA"


Factory = Callable[..., Registry]


def test_two_engines_share_one_database(registry_factory: Factory) -> None:
    """Two engine instances on one database still store a concurrent retransmission once."""
    one, two = registry_factory(), registry_factory()
    message = vxu("C-SHARED")
    answers: list[bytes] = []
    threads = [threading.Thread(target=lambda r=r: answers.append(r.send(message)))
               for r in (one, two, one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(answers)) == 1
    assert one.counts()["patient"] == 1
