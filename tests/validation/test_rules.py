"""Each validation rule, table-driven: one failing message and its passing counterpart."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import pytest

from engine.errors import Severity
from engine.hl7.er7 import parse
from engine.validation import ValidationResult, Validator, format_report
from tests.validation.messages import BASE_VXU, BASE_Z34, TODAY, edit


@cache
def validator(overlay: str | None = "cair2") -> Validator:
    return Validator.load(overlay=overlay)


def run(text: str, overlay: str | None = "cair2") -> ValidationResult:
    return validator(overlay).validate(parse(text), TODAY)


def triples(result: ValidationResult) -> set[tuple[str, int, str, str]]:
    return {(i.location.render(), i.code, i.severity.value, i.rule) for i in result.issues}


Change = tuple[str, int, str] | tuple[str, int, str, int]


@dataclass(frozen=True)
class Case:
    failing: tuple[Change, ...]
    expect: tuple[tuple[str, int, str, str], ...]  # ERR-2, 0357, severity, rule
    passing: tuple[Change, ...] = ()
    rejected: bool = False
    base: str = BASE_VXU


REFUSAL = (("RXA", 6, "999"), ("RXA", 7, ""), ("RXA", 9, ""), ("RXA", 15, ""),
           ("RXA", 16, ""), ("RXA", 17, ""), ("RXA", 10, ""), ("RXA", 11, ""),
           ("RXA", 20, "RE"), ("ORC", 3, "9999^MYEHR"))

CASES = {
    "usage.R PID-5 empty rejects PID and the message": Case(
        (("PID", 5, ""),),
        (("PID^1^5", 101, "E", "usage.R"), ("PID^1", 100, "E", "propagation.segment")),
        rejected=True),
    "valueset PID-8 unknown code empties it, then 101 and 100": Case(
        (("PID", 8, "Z"),),
        (("PID^1^8^1", 103, "E", "valueset"), ("PID^1^8", 101, "E", "propagation.field"),
         ("PID^1", 100, "E", "propagation.segment")),
        passing=(("PID", 8, "U"),), rejected=True),
    "valueset RXA-5 unknown CVX rejects the only order group": Case(
        (("RXA", 5, "999999^Unknown^CVX"),),
        (("RXA^1^5^1^1", 103, "E", "valueset"), ("RXA^1^5", 101, "E", "propagation.field"),
         ("RXA^1", 100, "E", "propagation.segment")),
        passing=(("RXA", 5, "20^DTaP^CVX"),), rejected=True),
    "RE segment NK1 with empty R field NK1-3 is dropped alone": Case(
        (("NK1", 3, ""),), (("NK1^1^3", 101, "E", "usage.R"),)),
    "valueset RXR-2 unknown site is a warning and emptied": Case(
        (("RXR", 2, "XX^Nowhere^HL70163"),), (("RXR^1^2^1^1", 103, "W", "valueset"),),
        passing=(("RXR", 2, "RA^Right Arm^HL70163"),)),
    "IZ-47 RXA-9 valued while RXA-20 is empty": Case(
        (("RXA", 20, ""),), (("RXA^1^9", 999, "W", "IZ-47"),)),
    "RXA-18 is required when RXA-20 = RE (refusal without reason)": Case(
        REFUSAL, (("RXA^1^18", 101, "E", "business.refusal_without_reason"),),
        passing=(*REFUSAL, ("RXA", 18, "00^Parental decision^NIP002")), rejected=True),
    "RXA-15 lot is required for an administered dose": Case(
        (("RXA", 15, ""),), (("RXA^1^15", 101, "E", "usage.C"),),
        passing=(("RXA", 9, "01^Historical^NIP001"), ("RXA", 15, ""), ("RXA", 17, ""),
                 ("RXA", 10, ""), ("RXA", 11, ""), ("RXA", 16, "")),
        rejected=True),
    "RXA-17 manufacturer is required for an administered dose": Case(
        (("RXA", 17, ""),), (("RXA^1^17", 101, "E", "usage.C"),), rejected=True),
    "RXA-7 is required when RXA-6 is not 999": Case(
        (("RXA", 7, ""),), (("RXA^1^7", 101, "E", "usage.C"),),
        passing=(("RXA", 6, "999"), ("RXA", 7, "")), rejected=True),
    "PD1-13 must be empty when PD1-12 is empty (usage X)": Case(
        (("PD1", 12, ""),), (("PD1^1^13", 0, "W", "usage.X"),),
        passing=(("PD1", 12, "Y"),)),
    "business: birth date in the future": Case(
        (("PID", 7, "20300101"),),
        (("PID^1^7", 101, "E", "business.dob_future"), ("PID^1", 100, "E", "propagation.segment")),
        rejected=True),
    "business: vaccination date in the future": Case(
        (("RXA", 3, "20300101"),),
        (("RXA^1^3", 101, "E", "business.vaccination_date_future"),
         ("RXA^1", 100, "E", "propagation.segment")), rejected=True),
    "business: vaccination before birth": Case(
        (("RXA", 3, "20190101"),),
        (("RXA^1^3", 101, "E", "business.vaccination_before_birth"),), rejected=True),
    "business: death date before birth": Case(
        (("PID", 29, "20190101"), ("PID", 30, "Y")),
        (("PID^1^29", 999, "W", "business.death_before_birth"),),
        passing=(("PID", 29, "20240101"), ("PID", 30, "Y"))),
    "business: non-US CVX cannot be an administered dose": Case(
        (("RXA", 5, "102^DTP-Hib-Hep B^CVX"),),
        (("RXA^1^5^1^1", 999, "E", "business.cvx_not_administrable"),
         ("RXA^1^5", 101, "E", "propagation.field")),
        passing=(("RXA", 5, "102^DTP-Hib-Hep B^CVX"), ("RXA", 9, "01^Historical^NIP001"),
                 ("RXA", 10, ""), ("RXA", 11, "")),
        rejected=True),
    "business: CVX/MVX mismatch is a warning": Case(
        (("RXA", 17, "PFR^Pfizer^MVX"),), (("RXA^1^17^1^1", 999, "W", "business.cvx_mvx_mismatch"),),
        passing=(("RXA", 17, "SKB^GlaxoSmithKline^MVX"),)),
    "business: duplicate OBX-4 sub-id for the same observation": Case(
        (("OBX", 3, "29768-9^VIS publication date^LN", 4),),
        (("OBX^4^4", 999, "W", "business.obx_duplicate_subid"),),
        passing=(("OBX", 3, "29768-9^VIS publication date^LN", 4), ("OBX", 4, "3", 4))),
    "cair2: MSH-22 is required": Case(
        (("MSH", 22, ""),), (("MSH^1^22", 101, "E", "cair2.MSH-22"),)),
    "cair2: PID-13 is required": Case(
        (("PID", 13, ""),), (("PID^1^13", 101, "E", "cair2.PID-13"),), rejected=True),
    "cair2: PID-3.4 missing is informational only": Case(
        (("PID", 3, "PAT001^^^^MR"),), (("PID^1^3^1^4", 101, "I", "cair2.PID-3.4"),)),
    "cair2: RXA-10.9 required when RXA-10.1 valued": Case(
        (("RXA", 10, "7832^NURSE^NANCY^^^^^^^^^^MR"),),
        (("RXA^1^10^1^9", 101, "E", "cair2.RXA-10.9"),)),
    "IZ-45 ORC-3 must be 9999 for a refusal": Case(
        (*REFUSAL[:-1], ("RXA", 18, "00^Parental decision^NIP002")),
        (("ORC^1^3", 999, "W", "IZ-45"),)),
    "IZ-46 PID-1 must be 1": Case((("PID", 1, "2"),), (("PID^1^1", 103, "W", "IZ-46"),)),
    "IZ-44 OBX-4 must be a positive integer": Case(
        (("OBX", 4, "A"),), (("OBX^1^4", 999, "W", "IZ-44"),)),
    "IZ-22 OBX-11 must be F (enforced through HL70085_IZ)": Case(
        (("OBX", 11, "P"),), (("OBX^1^11^1", 103, "E", "valueset"),)),
    "IZ-48 refused dose amount must be 999": Case(
        (*[c for c in REFUSAL if c[1] != 6], ("RXA", 18, "00^Parental decision^NIP002")),
        (("RXA^1^6", 999, "W", "IZ-48"),), rejected=True),
    "IZ-TS_Z MSH-7 needs seconds and a zone": Case(
        (("MSH", 7, "202501011200"),), (("MSH^1^7", 102, "W", "IZ-TS_Z"),)),
    "IZ-42 MSH-15 must be ER": Case((("MSH", 15, "AL"),), (("MSH^1^15", 103, "W", "IZ-42"),)),
    "IZ-70 NK1-1 numbered from 1": Case((("NK1", 1, "2"),), (("NK1^1^1", 999, "W", "IZ-70"),)),
    "NIST-01 OBX-1 numbered sequentially": Case(
        (("OBX", 1, "7"),), (("OBX^1^1", 999, "W", "NIST-01"),)),
    "IZ-24 administered VIS vaccine needs its VIS OBX set": Case(
        (("OBX", 3, "30963-3^Funding source^LN"),), (),
        rejected=False),
    "Z34 QPD-2 missing rejects the query": Case(
        (("QPD", 2, ""),),
        (("QPD^1^2", 101, "E", "usage.R"), ("QPD^1", 100, "E", "propagation.segment")),
        rejected=True, base=BASE_Z34),
    "IZ-27 RCP-1 must be empty or I": Case(
        (("RCP", 1, "D"),), (("RCP^1^1", 999, "W", "IZ-27"),), base=BASE_Z34),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rule_fails_on_the_failing_message(case: Case) -> None:
    """The failing message yields exactly the expected findings (code, severity, ERR-2, rule)."""
    result = run(edit(case.base, *case.failing))
    got = triples(result)
    assert set(case.expect) <= got, format_report(result, parse(edit(case.base, *case.failing)))
    assert result.rejected is case.rejected


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rule_passes_on_the_passing_message(case: Case) -> None:
    """The passing counterpart raises none of the rule's findings."""
    result = run(edit(case.base, *case.passing))
    rules = {e[3] for e in case.expect}
    assert not [i for i in result.issues if i.rule in rules], format_report(
        result, parse(edit(case.base, *case.passing)))


def test_iz24_missing_vis_set_is_reported() -> None:
    """An administered VIS vaccine without a 29769-7 presentation date fails IZ-24."""
    text = edit(BASE_VXU, ("OBX", 3, "30963-3^Funding source^LN"))
    lines = [ln for ln in text.split("\r") if "29769-7" not in ln]
    result = run("\r".join(lines))
    assert ("RXA^1^5", 999, "W", "IZ-24") in triples(result)


def test_clean_base_messages_have_no_findings() -> None:
    """The synthetic clean VXU and Z34 are clean under both the CDC base and CAIR2."""
    for overlay in ("cair2", None):
        assert run(BASE_VXU, overlay).issues == ()
        assert run(BASE_Z34, overlay).issues == ()


@pytest.mark.parametrize(("change", "cair2", "base"), [
    (("MSH", 22, ""), "cair2.MSH-22", None),
    (("MSH", 15, ""), None, "usage.R"),
    (("PID", 3, "PAT001^^^^MR"), "cair2.PID-3.4", "component.R"),
], ids=["MSH-22 only in CAIR2", "MSH-15 relaxed by CAIR2", "PID-3.4 W in CDC, I in CAIR2"])
def test_overlay_changes_rules(change: tuple[str, int, str], cair2: str | None,
                               base: str | None) -> None:
    """The overlay is configuration: the same message differs under CAIR2 and the CDC base."""
    text = edit(BASE_VXU, change)
    assert {i.rule for i in run(text, "cair2").issues} - {"IZ-42"} == ({cair2} if cair2 else set())
    assert {i.rule for i in run(text, None).issues} - {"IZ-42"} == ({base} if base else set())


def test_severity_override_changes_reported_severity() -> None:
    """acks/policy.yaml overrides map a rule id to another severity."""
    v = Validator.load(severity_overrides={"business.cvx_mvx_mismatch": "I"})
    result = v.validate(parse(edit(BASE_VXU, ("RXA", 17, "PFR^Pfizer^MVX"))), TODAY)
    assert [i.severity for i in result.issues] == [Severity.INFORMATION]


def test_order_group_rejection_drops_its_segments() -> None:
    """A rejected RXA drops ORC, RXA, RXR and the OBX of its order group."""
    two = BASE_VXU + "\r".join(BASE_VXU.split("\r")[4:11]) + "\r"
    two = two.replace("OBX|1|", "OBX|5|", 2)
    text = edit(two, ("RXA", 5, "999999^Unknown^CVX"))
    result = run(text)
    assert result.dropped_segments == frozenset(range(4, 11))
    assert result.rejected is False
    assert (5, 5) in result.emptied_fields


def test_issue_texts_never_contain_patient_values() -> None:
    """ERR-8 texts quote positions and codes, never names or dates of birth."""
    text = edit(BASE_VXU, ("PID", 7, "20300101"), ("PID", 8, "Q"), ("NK1", 3, ""))
    for issue in run(text).issues:
        for phi in ("TESTPATIENT", "ALPHA", "20300101", "MAIN ST", "5551234"):
            assert phi not in issue.text


def test_format_report_shows_rule_location_and_value() -> None:
    """The operator report lists rule id, ERR-2 location and the offending value."""
    text = edit(BASE_VXU, ("PID", 8, "Z"))
    report = format_report(run(text), parse(text))
    assert "valueset" in report and "PID^1^8^1" in report and "'Z'" in report
