"""business.ndc_mvx_mismatch: an NDC in RXA-5 names its maker; RXA-17 must be that company.

Table-driven like test_rules.py: each case edits the synthetic BASE_VXU (CVX 08 Hep B, RXA-17
MSD, administered) and lists exactly the findings expected. NDC -> MVX comes from CDC's
NDC_Linker.txt (profiles/codes.json `ndc_mvx`), companies from `mvx_same_company`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache

import pytest

from engine.config import IdentityConfig
from engine.hl7.charset import peek_header
from engine.hl7.er7 import parse
from engine.responses import ResponseBuilder
from engine.validation import ValidationResult, Validator, format_report
from tests.validation.messages import BASE_VXU, TODAY, edit

RULE = "business.ndc_mvx_mismatch"
WEAK = "business.cvx_mvx_mismatch"
RECOMBIVAX = "00006-4981-00^Recombivax HB^NDC"  # Merck (MSD), CVX 08
ENGERIX = "58160-0820-11^Engerix-B^NDC"         # GSK (SKB), CVX 08
FLUZONE = "49281-0718-88^Flu^NDC"               # Sanofi Pasteur (PMC), CVX 185
FLUBLOK = "42874-0117-10^Flublok^NDC"           # Protein Sciences (PSC, a Sanofi company)
VAXELIS = "63361-0243-58^Vaxelis^NDC"           # MSP (Merck-Sanofi partnership), CVX 146
HISTORICAL = (("RXA", 9, "01^Historical^NIP001"), ("RXA", 10, ""), ("RXA", 11, ""))


@cache
def validator() -> Validator:
    return Validator.load()


def run(text: str) -> ValidationResult:
    return validator().validate(parse(text), TODAY)


Change = tuple[str, int, str]


@dataclass(frozen=True)
class Case:
    changes: tuple[Change, ...]
    expect: tuple[tuple[str, int, str, str], ...]  # exactly: ERR-2, 0357, severity, rule


CASES = {
    "NDC with its own maker: clean": Case((("RXA", 5, RECOMBIVAX),), ()),
    "NDC 11-digit form with its own maker: clean": Case(
        (("RXA", 5, "00006498100^Recombivax HB^NDC"),), ()),
    "NDC of another maker: one W at RXA-17.1, not also the CVX/MVX warning": Case(
        (("RXA", 5, ENGERIX), ("RXA", 17, "PFR^Pfizer^MVX")),
        (("RXA^1^17^1^1", 999, "W", RULE),)),
    "Sanofi NDC sent with MSD": Case(
        (("RXA", 5, FLUZONE), ("RXA", 17, "MSD^Merck^MVX")),
        (("RXA^1^17^1^1", 999, "W", RULE),)),
    "GSK NDC with MSD (CVX 08 alone would allow MSD)": Case(
        (("RXA", 5, ENGERIX),), (("RXA^1^17^1^1", 999, "W", RULE),)),
    "NDC known without RXA-5.3 = NDC": Case(
        (("RXA", 5, "58160-0820-11^Engerix-B"),),
        (("RXA^1^17^1^1", 999, "W", RULE), ("RXA^1^5^1^3", 101, "W", "component.R"))),
    "same company: Protein Sciences NDC sent with Sanofi Pasteur": Case(
        (("RXA", 5, FLUBLOK), ("RXA", 17, "PMC^Sanofi^MVX")), ()),
    "same company: Sanofi NDC sent with inactive predecessor Connaught": Case(
        (("RXA", 5, FLUZONE), ("RXA", 17, "CON^Connaught^MVX")), ()),
    "partnership: MSP NDC sent with a partner (MSD)": Case(
        (("RXA", 5, VAXELIS), ("RXA", 17, "MSD^Merck^MVX")), ()),
    "partnership is one way: Sanofi NDC sent with MSP": Case(
        (("RXA", 5, FLUZONE), ("RXA", 17, "MSP^MSP Vaccine^MVX")),
        (("RXA^1^17^1^1", 999, "W", RULE),)),
    "NDC with RXA-17 empty (historical dose): nothing": Case(
        (("RXA", 5, ENGERIX), *HISTORICAL, ("RXA", 17, "")), ()),
    "NDC with RXA-17 empty (administered): only the usage findings": Case(
        (("RXA", 5, ENGERIX), ("RXA", 17, "")),
        (("RXA^1^17", 101, "E", "usage.C"), ("RXA^1", 100, "E", "propagation.segment"))),
    "unknown NDC: value set finding only, no manufacturer finding": Case(
        (("RXA", 5, "99999-9999-99^Unknown^NDC"), ("RXA", 17, "PFR^Pfizer^MVX")),
        (("RXA^1^5^1^1", 103, "E", "valueset"), ("RXA^1^5", 101, "E", "propagation.field"),
         ("RXA^1", 100, "E", "propagation.segment"))),
    "CVX-coded dose: CVX/MVX rule unchanged": Case(
        (("RXA", 17, "PFR^Pfizer^MVX"),), (("RXA^1^17^1^1", 999, "W", WEAK),)),
    "CVX-coded dose with a maker of that CVX: clean": Case(
        (("RXA", 17, "SKB^GlaxoSmithKline^MVX"),), ()),
}


def _findings(result: ValidationResult) -> set[tuple[str, int, str, str]]:
    return {(i.location.render(), i.code, i.severity.value, i.rule) for i in result.issues}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_ndc_mvx_case(case: Case) -> None:
    text = edit(BASE_VXU, *case.changes)
    result = run(text)
    assert _findings(result) == set(case.expect), format_report(result, parse(text))


def test_mismatch_is_a_warning_ae_and_the_dose_is_kept() -> None:
    """0357 999 / 0533 3, W; MSA AE under acks/policy.yaml; nothing rejected or emptied."""
    text = edit(BASE_VXU, ("RXA", 5, FLUZONE), ("RXA", 17, "MSD^Merck^MVX"))
    result = run(text)
    (issue,) = result.issues
    assert (issue.code, issue.application_code, issue.rule) == (999, 3, RULE)
    assert issue.text == ("RXA-17 manufacturer 'MSD' is not the maker of RXA-5 NDC "
                          "'49281-0718-88' (PMC)")
    assert not result.rejected and not result.dropped_segments and not result.emptied_fields
    zone = timezone(timedelta(hours=-8))
    builder = ResponseBuilder(IdentityConfig(), ids=lambda: "ACK1",
                              clock=lambda: datetime(2025, 6, 1, 12, tzinfo=zone))
    ack = parse(builder.ack(peek_header(text.encode()), list(result.issues)))
    msa, err = ack.first("MSA"), ack.first("ERR")
    assert msa is not None and msa.value(1) == "AE"
    assert err is not None and err.value(2) == "RXA" and err.value(4) == "W"
    assert err.raw.split("|")[2] == "RXA^1^17^1^1"
    assert err.raw.split("|")[5].startswith("3^")


def test_multi_maker_ndc_names_every_maker() -> None:
    """An NDC CDC links to two MVX codes (Barr, retired into Teva) accepts both."""
    ndc = "51285-0138-50^Adenovirus^NDC"
    for mvx in ("BRR", "TVA"):
        result = run(edit(BASE_VXU, ("RXA", 5, ndc), ("RXA", 17, f"{mvx}^x^MVX")))
        assert RULE not in {i.rule for i in result.issues}
    result = run(edit(BASE_VXU, ("RXA", 5, ndc), ("RXA", 17, "PFR^x^MVX")))
    texts = [i.text for i in result.issues if i.rule == RULE]
    assert texts == ["RXA-17 manufacturer 'PFR' is not the maker of RXA-5 NDC "
                     "'51285-0138-50' (BRR/TVA)"]


def test_ndc_without_mvx_mapping_falls_back_to_the_cvx_rule() -> None:
    """An NDC the tables know (CVX) but without a maker: no NDC finding, CVX/MVX as before."""
    v = Validator.load()
    table = dict(v.tables.ndc_mvx)
    del table["58160-0820-11"]
    v.tables.ndc_mvx = table
    result = v.validate(parse(edit(BASE_VXU, ("RXA", 5, ENGERIX), ("RXA", 17, "PFR^x^MVX"))),
                        TODAY)
    assert {i.rule for i in result.issues} == {WEAK}
    result = v.validate(parse(edit(BASE_VXU, ("RXA", 5, ENGERIX))), TODAY)
    assert result.issues == ()


def test_every_ndc_has_a_maker_in_the_mvx_table() -> None:
    """The generated table covers the CDC NDC lists and names only known MVX codes."""
    tables = validator().tables
    assert set(tables.ndc) <= set(tables.ndc_mvx)
    for _shown, accepted in tables.ndc_mvx.values():
        assert accepted <= set(tables.mvx)
