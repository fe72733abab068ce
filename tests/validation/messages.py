"""Synthetic messages written for these tests (no real patient), and helpers to mutate them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

from engine.hl7.er7 import Message, Segment, parse
from engine.hl7.escape import DEFAULT_DELIMITERS
from engine.validation import Validator
from engine.validation.compiler import CompiledProfile, SegmentRules
from engine.validation.plan import SegmentPlan
from engine.validation.validator import _Shape

TODAY = date(2025, 6, 1)

BASE_VXU = "\r".join([
    "MSH|^~\\&|MYEHR|CAIRSITE1|CAIR2|CAIRCC|20250101120000-0800||VXU^V04^VXU_V04|MSG0001|P|"
    "2.5.1|||ER|AL|||||Z22^CDCPHINVS|CAIRSITE1^^^^^CAIR&2.16.840.1.113883.3.72&ISO^XX^^^1234|CAIR2",
    "PID|1||PAT001^^^MYEHR^MR||TESTPATIENT^ALPHA^Q^^^^L||20200115|F|||"
    "100 MAIN ST^^SACRAMENTO^CA^95814^USA^L||^PRN^PH^^^916^5551234|||||||||"
    "2186-5^Not Hispanic or Latino^CDCREC",
    "PD1|||||||||||02^Reminder/recall - any method^HL70215|N|20250101|||A|20200115|20200115",
    "NK1|1|TESTPARENT^BETA^^^^^L|MTH^Mother^HL70063|100 MAIN ST^^SACRAMENTO^CA^95814^USA^L|"
    "^PRN^PH^^^916^5551234",
    "ORC|RE||ORD001^MYEHR|||||||^ENTERER^EDDIE|||||||MYCLINIC^My Clinic^HL70362",
    "RXA|0|1|20250101||08^Hep B, adolescent or pediatric^CVX|0.5|mL^milliliters^UCUM||"
    "00^New immunization record^NIP001|7832^NURSE^NANCY^^^^^^MYEHR^^^^MR|^^^CAIRSITE1||||"
    "LOT123|20261231|MSD^Merck and Co^MVX|||CP|A",
    "RXR|C28161^Intramuscular^NCIT|LD^Left Deltoid^HL70163",
    "OBX|1|CE|64994-7^Vaccine funding program eligibility category^LN|1|"
    "V02^VFC eligible - Medicaid/Medicaid Managed Care^HL70064||||||F|||20250101|||"
    "VXC40^Eligibility captured at the immunization level^CDCPHINVS",
    "OBX|2|CE|30956-7^Vaccine type^LN|2|08^Hep B^CVX||||||F",
    "OBX|3|TS|29768-9^VIS publication date^LN|2|20120202||||||F",
    "OBX|4|TS|29769-7^VIS presentation date^LN|2|20250101||||||F",
]) + "\r"

BASE_Z34 = "\r".join([
    "MSH|^~\\&|MYEHR|CAIRSITE1|CAIR2|CAIRCC|20250101120000-0800||QBP^Q11^QBP_Q11|Q0001|P|"
    "2.5.1|||ER|AL|||||Z34^CDCPHINVS|CAIRSITE1|CAIR2",
    "QPD|Z34^Request Immunization History^CDCPHINVS|QT0001|PAT001^^^MYEHR^MR|"
    "TESTPATIENT^ALPHA^Q^^^^L|TESTMOTHER^GAMMA^^^^^M|20200115|F|"
    "100 MAIN ST^^SACRAMENTO^CA^95814^USA^L",
    "RCP|I|5^RD&records&HL70126",
]) + "\r"


def set_field(text: str, seg_id: str, field: int, value: str, occurrence: int = 1) -> str:
    """Replace field `field` (HL7 numbering) of the n-th `seg_id` segment."""
    lines = text.rstrip("\r").split("\r")
    seen = 0
    for k, line in enumerate(lines):
        if line[:3] != seg_id:
            continue
        seen += 1
        if seen != occurrence:
            continue
        parts = line.split("|")
        index = field - 1 if seg_id == "MSH" else field
        while len(parts) <= index:
            parts.append("")
        parts[index] = value
        lines[k] = "|".join(parts)
        return "\r".join(lines) + "\r"
    raise ValueError(f"no {seg_id} #{occurrence}")


def edit(text: str, *changes: tuple[str, int, str] | tuple[str, int, str, int]) -> str:
    """Apply (segment, field, value[, occurrence]) changes in order."""
    for change in changes:
        occurrence = change[3] if len(change) == 4 else 1
        text = set_field(text, change[0], change[1], change[2], occurrence)
    return text


@dataclass(frozen=True)
class Planned:
    """One checked segment of an inbound default-delimiter message, with its plan's verdict."""

    message: Message
    profile: CompiledProfile
    shape: _Shape
    index: int
    rules: SegmentRules
    plan: SegmentPlan
    segment: Segment
    clean: bool


def planned_segments(v: Validator, text: str) -> Iterator[Planned]:
    """The segments the field pass checks with a plan (inbound messages with the default
    delimiters only: the plans serve no others), each with `plan.verdict`'s answer."""
    message = parse(text)
    pid = v.pick_profile(message)
    if pid not in ("Z22", "Z34", "Z44") or message.delimiters != DEFAULT_DELIMITERS:
        return
    p = v.profiles[pid]
    shape = v._shape(p, message)
    for i, rules, plan in shape.checks:
        seg = message.segments[i]
        clean, _bad = plan.verdict(seg.raw, seg.fields)
        yield Planned(message, p, shape, i, rules, plan, seg, clean)
