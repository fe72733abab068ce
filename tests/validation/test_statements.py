"""Every IZ-nn conformance statement of Z22/Z34/Z44: a failing message per enforced statement.

profiles/conformance-statements.md lists each statement with the test id here (or why not).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

from engine.hl7.er7 import parse
from engine.validation import ValidationResult, Validator
from tests.validation.messages import BASE_VXU, BASE_Z34, TODAY, edit

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
BASE_Z44 = BASE_Z34.replace("Z34^CDCPHINVS", "Z44^CDCPHINVS").replace(
    "Z34^Request Immunization History", "Z44^Request Evaluated History and Forecast")
WITH_IN1 = BASE_VXU.replace("\rORC|", "\rIN1|1|X1^Plan^HL70072|INS1^^^MYEHR^XX||||||||||||5\rORC|", 1)


@cache
def validator() -> Validator:
    return Validator.load(overlay=None)


def run(text: str) -> ValidationResult:
    return validator().validate(parse(text), TODAY)


STATEMENTS: dict[str, tuple[str, str, str]] = {  # id: (message, ERR-2, rule)
    "IZ-1": (edit(BASE_Z34, ("RCP", 2, "0^RD&records&HL70126")), "RCP^1^2^1^1", "IZ-1"),
    "IZ-2": (edit(BASE_Z34, ("RCP", 2, "5^XX&records&HL70126")), "RCP^1^2^1^2", "valueset.component"),
    "IZ-3": (edit(BASE_VXU, ("MSH", 21, "Z22^CDCPHINVS^not-an-oid^ISO")), "MSH^1^21^1^3", "IZ-3"),
    "IZ-4": (edit(BASE_VXU, ("MSH", 21, "Z22^CDCPHINVS^2.16.840.1^DNS")), "MSH^1^21^1^4", "valueset.component"),
    "IZ-5": (edit(BASE_VXU, ("MSH", 4, "CAIRSITE1^not-an-oid^ISO")), "MSH^1^4^1^2", "IZ-5"),
    "IZ-6": (edit(BASE_VXU, ("MSH", 4, "CAIRSITE1^2.16.840.1^DNS")), "MSH^1^4^1^3", "valueset.component"),
    "IZ-12": (BASE_VXU.replace("|", "!"), "MSH^1^1", "IZ-12"),
    "IZ-13": (BASE_VXU.replace("MSH|^~\\&|", "MSH|^~\\&#|", 1), "MSH^1^2", "IZ-13"),
    "IZ-15": (edit(BASE_VXU, ("MSH", 12, "2.5")), "MSH^1^12^1^1", "valueset.component"),
    "IZ-17": (edit(BASE_VXU, ("MSH", 9, "VXU^V04^VXU_V99")), "MSH^1^9", "IZ-17"),
    "IZ-22": (edit(BASE_VXU, ("OBX", 11, "P")), "OBX^1^11^1", "valueset"),
    "IZ-23": (edit(BASE_VXU, ("OBX", 3, "30963-3^Funding source^LN")), "OBX^1^3", "IZ-23"),
    "IZ-24": ("\r".join(ln for ln in BASE_VXU.split("\r") if "29769-7" not in ln),
              "RXA^1^5", "IZ-24"),
    "IZ-25": (edit(BASE_VXU, ("ORC", 1, "OK")), "ORC^1^1", "IZ-25"),
    "IZ-27": (edit(BASE_Z34, ("RCP", 1, "D")), "RCP^1^1", "IZ-27"),
    "IZ-28": (edit(BASE_VXU, ("RXA", 1, "1")), "RXA^1^1", "IZ-28"),
    "IZ-29": (edit(BASE_VXU, ("RXA", 2, "2")), "RXA^1^2", "IZ-29"),
    "IZ-30": (edit(BASE_VXU, ("RXA", 4, "20250102")), "RXA^1^4", "IZ-30"),
    "IZ-31": (edit(BASE_VXU, ("RXA", 9, "09^Other^NIP001")), "RXA^1^9", "IZ-31"),
    "IZ-32": (edit(BASE_VXU, ("RXA", 18, "00^Parental decision^NIP002")), "RXA^1^20", "IZ-32"),
    "IZ-35": (edit(BASE_VXU, ("OBX", 5, "X99^Bad^HL70064")), "OBX^1^5", "IZ-35"),
    "IZ-36": (edit(BASE_VXU, ("OBX", 3, "69764-9^VIS document^LN", 2),
                   ("OBX", 5, "999^Bad^cdcgs1vis", 2)), "OBX^2^5", "IZ-36"),
    "IZ-37": (edit(BASE_VXU, ("OBX", 5, "QQQ^Bad^CVX", 2)), "OBX^2^5", "IZ-37"),
    "IZ-41": (edit(BASE_VXU, ("MSH", 16, "NE")), "MSH^1^16", "IZ-41"),
    "IZ-42": (edit(BASE_VXU, ("MSH", 15, "AL")), "MSH^1^15", "IZ-42"),
    "IZ-43": (edit(BASE_VXU, ("MSH", 21, "Z23^CDCPHINVS")), "MSH^1^21", "IZ-43"),
    "IZ-44": (edit(BASE_VXU, ("OBX", 4, "0")), "OBX^1^4", "IZ-44"),
    "IZ-45": (edit(BASE_VXU, ("RXA", 20, "NA")), "ORC^1^3", "IZ-45"),
    "IZ-46": (edit(BASE_VXU, ("PID", 1, "2")), "PID^1^1", "IZ-46"),
    "IZ-47": (edit(BASE_VXU, ("RXA", 20, "")), "RXA^1^9", "IZ-47"),
    "IZ-48": (edit(BASE_VXU, ("RXA", 20, "RE"), ("RXA", 18, "00^Parental decision^NIP002")),
              "RXA^1^6", "IZ-48"),
    "IZ-49": (edit(BASE_VXU, ("RXA", 5, "998^No vaccine administered^CVX")), "RXA^1^6", "IZ-49"),
    "IZ-55": (edit(BASE_Z34, ("MSH", 9, "QBP^Q11^QBP_Q99")), "MSH^1^9", "IZ-55"),
    "IZ-56": (edit(BASE_Z34, ("MSH", 21, "Z22^CDCPHINVS")), "MSH^1^21", "IZ-56"),
    "IZ-57": (edit(BASE_Z34, ("MSH", 15, "AL")), "MSH^1^15", "IZ-57"),
    "IZ-58": (edit(BASE_Z44, ("MSH", 16, "ER")), "MSH^1^16", "IZ-58"),
    "IZ-64": (edit(BASE_Z44, ("MSH", 21, "Z22^CDCPHINVS")), "MSH^1^21", "IZ-64"),
    "IZ-66": (edit(BASE_VXU, ("PID", 6, "MOTHER^MARY^^^^^L")), "PID^1^6^1^7", "IZ-66"),
    "IZ-67": (edit(BASE_Z34, ("QPD", 1, "Z34^Wrong name^CDCPHINVS")), "QPD^1^1", "IZ-67"),
    "IZ-68": (edit(BASE_Z44, ("QPD", 1, "Z44^Wrong name^CDCPHINVS")), "QPD^1^1", "IZ-68"),
    "IZ-69": (edit(WITH_IN1, ("IN1", 1, "2")), "IN1^1^1", "IZ-69"),
    "IZ-70": (edit(BASE_VXU, ("NK1", 1, "3")), "NK1^1^1", "IZ-70"),
    "IZ-DT_D": (edit(BASE_VXU, ("PD1", 17, "2020-01-15")), "PD1^1^17^1", "datatype"),
    "IZ-TS": (edit(BASE_Z44, ("QPD", 12, "2020")), "QPD^1^12", "IZ-TS"),
    "IZ-TS_NZ": (edit(BASE_VXU, ("PID", 7, "2020")), "PID^1^7", "IZ-TS_NZ"),
    "IZ-TS_Z": (edit(BASE_VXU, ("MSH", 7, "202501011200")), "MSH^1^7", "IZ-TS_Z"),
    "NIST-01": (edit(BASE_VXU, ("OBX", 1, "9")), "OBX^1^1", "NIST-01"),
}


@pytest.mark.parametrize(("text", "where", "rule"), STATEMENTS.values(), ids=STATEMENTS.keys())
def test_statement_is_enforced(text: str, where: str, rule: str) -> None:
    """The failing message for a statement is reported at the statement's target."""
    result = run(text)
    got = {(i.location.render(), i.rule) for i in result.issues}
    assert (where, rule) in got, sorted(got)


def test_every_statement_is_listed() -> None:
    """conformance-statements.md lists every IZ-nn of Z22/Z34/Z44 (enforced with a test, or why not)."""
    listed = (PROFILES / "conformance-statements.md").read_text(encoding="utf-8")
    ids = {c["id"] for p in ("Z22", "Z34", "Z44")
           for c in json.loads((PROFILES / f"{p}.json").read_text())["constraints"]}
    missing = [i for i in sorted(ids) if not re.search(rf"\|\s*{re.escape(i)}\s*\|", listed)]
    assert missing == []
    untested = [i for i in sorted(ids) if i not in STATEMENTS
                and not re.search(rf"\|\s*{re.escape(i)}\s*\|[^\n]*not enforced", listed)]
    assert untested == []
