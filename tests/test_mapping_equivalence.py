"""The VXU mapper reads exactly what the message says, however the mapper reads it.

`engine.mapping` compiles `mappings/vxu.yaml` into readers that split a field only as deep as a
path asks, unescape only leaves that hold the escape character and remember coded values
between messages. These tests pin down that none of that shows: values equal a plain reading
of the full field tree (`Segment.field_tree`), the sender's choice of delimiters changes
nothing, a warm mapper maps like a fresh one, and a hand-written VXU maps field by field to
the records the YAML promises.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import domain
from engine.errors import MessageParseError
from engine.hl7 import Delimiters, decode, encode, parse
from engine.mapping import MAPPINGS_DIR, MappingError, MappingResult, VxuMapper
from tests.conftest import needs_shared, shared_messages

MAPPER = VxuMapper.load()
MSH = "MSH|^~\\&|EHR|ORG-A|IIS|CAIR2|20240115120000||VXU^V04^VXU_V04|C1|P|2.5.1"
OTHER = Delimiters(field="#", component="*", repetition="!", escape="$", subcomponent="@")


def _vxu(*segments: str) -> str:
    return "\r".join([MSH, *segments]) + "\r"


def _map(text: str, dropped: frozenset[int] = frozenset(),
         emptied: frozenset[tuple[int, int]] = frozenset()) -> MappingResult:
    return VxuMapper.load().map(parse(text), dropped, emptied)


# --- values equal a reading of the whole field tree ------------------------------------------

# Field texts rich in delimiters and escape sequences (\F\ \S\ \T\ \R\ \E\ \X..\ \H\, lone \).
_FIELD = st.lists(st.sampled_from(["a", "B7", " ", "^", "&", "~", "\\T\\", "\\S\\", "\\F\\",
                                   "\\R\\", "\\E\\", "\\X41\\", "\\H\\", "\\", "L"]),
                  max_size=14).map("".join)


def _leaf(tree: list[list[list[str]]], rep: int, comp: int, sub: int) -> str:
    if rep > len(tree) or comp > len(tree[rep - 1]) or sub > len(tree[rep - 1][comp - 1]):
        return ""
    return tree[rep - 1][comp - 1][sub - 1]


@settings(max_examples=300, deadline=None)
@given(names=_FIELD, sex=_FIELD, lots=_FIELD)
def test_values_equal_the_unescaped_field_tree(names: str, sex: str, lots: str) -> None:
    """PID-5 (XPN, repeating), PID-8 (text) and RXA-15 (repeating text) read as the tree says."""
    text = _vxu(f"PID|1||MR1^^^A^MR||{names}||20200101|{sex}",
                f"RXA|0|1|20240115||08^HepB^CVX|||||||||{lots}")
    message = parse(text)
    pid, rxa = message.segments[1], message.segments[2]
    result = MAPPER.map(message)
    assert result.vxu is not None or not pid.value(5).strip()
    if result.vxu is None:
        return

    def name(rep: list[list[str]]) -> domain.Name:
        t = [rep]
        return domain.Name(_leaf(t, 1, 1, 1), _leaf(t, 1, 2, 1), _leaf(t, 1, 3, 1),
                           _leaf(t, 1, 4, 1), _leaf(t, 1, 5, 1), _leaf(t, 1, 7, 1))

    names_tree = pid.field_tree(5)
    assert result.vxu.patient.names == tuple(n for rep in names_tree if (n := name(rep)))
    assert result.vxu.patient.sex == (_leaf(pid.field_tree(8), 1, 1, 1) if sex else "")
    assert result.vxu.patient.identifiers == (domain.Identifier("MR1", "A", "MR"),)
    [event] = result.vxu.events
    assert event.lot_numbers == (
        tuple(v for rep in rxa.field_tree(15) if (v := _leaf([rep], 1, 1, 1))) if lots else ())


# --- delimiters, caches and validation's verdict ---------------------------------------------

def _with_delimiters(text: str, d: Delimiters) -> str:
    """The same message written with other delimiters (every leaf re-escaped for them)."""
    return encode(parse(text).tree(), d)


def _whole_messages() -> list[Path]:
    """The shared message files that parse (fragments without an MSH do not)."""
    found = []
    for path in shared_messages():
        try:
            parse(decode(path.read_bytes()))
        except MessageParseError:
            continue
        found.append(path)
    return found


@needs_shared()
@pytest.mark.parametrize("path", _whole_messages(), ids=lambda p: p.name)
def test_mapping_ignores_the_delimiters_chosen(path: Path) -> None:
    """A real message maps identically when re-written with other delimiters (uncached path)."""
    text = decode(path.read_bytes())
    assert MAPPER.map(parse(_with_delimiters(text, OTHER))) == MAPPER.map(parse(text))


@needs_shared()
def test_a_warm_mapper_maps_like_a_fresh_one() -> None:
    """Records remembered from earlier messages never change what a later message maps to."""
    texts = [decode(path.read_bytes()) for path in _whole_messages()]
    warm = VxuMapper.load()
    for text in texts:
        warm.map(parse(text))
    for text in texts:
        assert warm.map(parse(text)) == VxuMapper.load().map(parse(text))


@pytest.mark.parametrize(("where", "change"), [
    ("a path numbered from 0", ("order_group", "attributes", "amount", {"path": "RXA-0"})),
    ("a component numbered from 0", ("types", "CE", "components", {"code": "0"})),
    ("MSH-2 as a composite", ("patient", "attributes", "sex", {"path": "MSH-2", "type": "CE"})),
    ("an unknown attribute", ("patient", "attributes", "shoe_size", {"field": 9})),
    ("an unknown normalisation", ("order_group", "attributes", "route",
                                  {"path": "RXR-1", "type": "CE", "normalise": "nope"})),
])
def test_a_malformed_mapping_fails_at_load(where: str, change: tuple[Any, ...]) -> None:
    spec = yaml.safe_load((MAPPINGS_DIR / "vxu.yaml").read_text(encoding="utf-8"))
    *keys, last, value = change
    target = spec
    for key in keys:
        target = target[key]
    target[last] = value
    with pytest.raises(MappingError):
        VxuMapper(spec)


def test_dropped_segments_are_invisible_and_emptied_fields_read_empty() -> None:
    text = _vxu("PID|1||MR1^^^A^MR||Doe^Jane^^^^^L||20200101|F",
                "NK1|1|Doe^John^^^^^L|FTH^Father^HL70063",
                "ORC|RE||K1^EHR",
                "RXA|0|1|20240115||08^HepB^CVX|0.5|mL^mL^UCUM||||||||LOT1|20301231|MSD^Merck^MVX",
                "RXR|C28161^Intramuscular^NCIT")
    plain = _map(text).vxu
    assert plain is not None and plain.responsible_persons and plain.events[0].route.code
    verdict = _map(text, dropped=frozenset({2, 5}), emptied=frozenset({(1, 8), (4, 15)})).vxu
    assert verdict is not None
    assert verdict.responsible_persons == ()  # NK1 (index 2) dropped
    assert verdict.patient.sex == ""  # PID-8 emptied
    [event] = verdict.events
    assert event.lot_numbers == () and event.route == domain.Coded()  # RXA-15 emptied, RXR dropped
    assert event.administered.code == "08" and event.manufacturer.code == "MSD"


def test_required_paths_are_reported_with_their_locations() -> None:
    missing_name = _map(_vxu("PID|1||MR1^^^A^MR||||2020|F"))
    assert missing_name.rejected and missing_name.vxu is None
    assert [(i.code, i.location.segment, i.location.field) for i in missing_name.issues] == [
        (101, "PID", 5), (102, "PID", 7)]  # PID-5 missing, PID-7 sent but no date
    no_product = _map(_vxu("PID|1||MR1^^^A^MR||Doe^Jane||20200101|F", "ORC|RE||K1^EHR",
                           "RXA|0|1|20240115||"))
    assert not no_product.rejected and no_product.vxu is not None
    assert no_product.vxu.events == ()
    [issue] = no_product.issues
    assert (issue.code, issue.location.segment, issue.location.field) == (101, "RXA", 5)


# --- a hand-written VXU, field by field -------------------------------------------------------

SPEC_VXU = _vxu(
    "PID|1||MR1^^^ORG-A&1.2.3&ISO^MR~SS1^^^SSA^SS||O\\S\\Brien^Mary^Ann^^^^L~Mo^Mae^^^^^A|"
    "Smith^Sue^^^^^M|20200115|F||2106-3^White^CDCREC|1 A St^^Town^CA^90001^USA^H||"
    "^PRN^PH^^^555^5551234|||||||||2186-5^Not Hispanic^CDCREC||Y|2",
    "PD1|||||||||||02^Reminder^HL70215|N|20240101|||A|20240102|20240103",
    "NK1|1|O\\S\\Brien^Pat^^^^^L|MTH^Mother^HL70063",
    "RXA|0|1|20240115101500||00006-4047-20^RotaTeq^NDC|2.0|mL^mL^UCUM||00^New^NIP001|"
    "7^Nurse^Nia^^^^^^EHR^L^^^PRN|^^^SITE1||||L1~L2|20301231|MSD^Merck^MVX|||CP|U",
    "RXR|PO^Oral^HL70162",
    "OBX|1|CE|64994-7^Eligibility^LN|1|V02^VFC^HL70064||||||F",
    "OBX|2|CE|69764-9^Document^LN|2|253088698300017211170620^Rota VIS^cdcgs1vis||||||F",
    "OBX|3|TS|29769-7^Presented^LN|2|20240115||||||F",
    "OBX|4|NM|30945-0^Contraindication^LN|3|42|d^days^UCUM|||||F|||20240110",
    "ORC|RE||9999^EHR",
    "RXA|0|1|20240301||107^DTaP^CVX|999||||||||||||00^Parental decision^NIP002||RE",
)


def test_a_vxu_maps_field_by_field() -> None:
    result = _map(SPEC_VXU)
    assert not result.rejected and result.issues == ()
    vxu = result.vxu
    assert vxu is not None
    assert vxu.organization == "ORG-A"
    patient = vxu.patient
    assert patient.identifiers == (domain.Identifier("MR1", "ORG-A", "MR"),
                                   domain.Identifier("SS1", "SSA", "SS"))
    assert patient.names == (domain.Name("O^Brien", "Mary", "Ann", type_code="L"),
                             domain.Name("Mo", "Mae", type_code="A"))
    assert patient.mother_maiden_names == (domain.Name("Smith", "Sue", type_code="M"),)
    assert patient.birth_date == date(2020, 1, 15) and patient.sex == "F"
    assert patient.races == (domain.Coded("2106-3", "White", "CDCREC"),)
    assert patient.addresses == (domain.Address("1 A St", "", "Town", "CA", "90001", "USA", "H"),)
    assert patient.phones == (domain.Phone("PRN", "PH", area="555", number="5551234"),)
    assert patient.ethnicities == (domain.Coded("2186-5", "Not Hispanic", "CDCREC"),)
    assert (patient.multiple_birth, patient.birth_order) == ("Y", 2)
    assert vxu.has_pd1 and vxu.settings == domain.PatientSettings(
        domain.Coded("02", "Reminder", "HL70215"), date(2024, 1, 3), "N", date(2024, 1, 1), "A",
        date(2024, 1, 2))
    [person] = vxu.responsible_persons
    assert person.names == (domain.Name("O^Brien", "Pat", type_code="L"),)
    assert person.relationship == domain.Coded("MTH", "Mother", "HL70063")

    dose, refusal = vxu.events
    # An RXA without an ORC of its own starts a group; the next ORC starts another.
    assert (dose.orc_sequence, dose.rxa_sequence) == (0, 1)
    assert (refusal.orc_sequence, refusal.rxa_sequence) == (1, 2)
    assert dose.kind is domain.EventKind.DOSE and dose.action is domain.Action.UPDATE
    assert dose.key == domain.EventKey()
    assert dose.ndc == "00006404720" and dose.cvx == "116"  # dashed 5-4-2 NDC → CVX table
    assert dose.administered_on == date(2024, 1, 15)
    assert dose.administered_ts == "20240115101500"
    assert dose.amount == Decimal("2.0") and dose.units.code == "mL"
    assert dose.administering_provider == domain.Provider(
        "7", "Nurse", "Nia", authority="EHR", id_type="PRN")
    assert dose.administered_at == domain.Site(facility="SITE1")
    assert dose.lot_numbers == ("L1", "L2")
    assert dose.expiration_date == date(2030, 12, 31)
    # Legacy HL7 0162 route → NCIT, the original kept as the alternate triplet.
    assert dose.route == domain.Coded("C38288", "Oral", "NCIT", "PO", "Oral", "HL70162")
    assert dose.funding_eligibility == domain.Coded("V02", "VFC", "HL70064")
    assert dose.vis == (domain.Vis(
        document=domain.Coded("253088698300017211170620", "Rota VIS", "cdcgs1vis"),
        presented=date(2024, 1, 15)),)
    assert dose.observations == (domain.Observation(
        domain.Coded("30945-0", "Contraindication", "LN"), "NM", "42",
        units=domain.Coded("d", "days", "UCUM"), sub_id="3", observed_on=date(2024, 1, 10),
        status="F"),)

    assert refusal.kind is domain.EventKind.REFUSAL
    assert refusal.key == domain.EventKey("9999", "EHR") and MAPPER.is_placeholder_key(refusal.key)
    assert refusal.cvx == "107" and refusal.refusal_reason.code == "00"
    assert refusal.completion_status == "RE"


@pytest.mark.parametrize("record", [
    domain.Coded, domain.Name, domain.Identifier, domain.Address, domain.Phone, domain.Provider,
    domain.Site, domain.EventKey, domain.Patient, domain.PatientSettings,
    domain.ResponsiblePerson, domain.Observation, domain.Vis, domain.Vaccination])
def test_fast_constructor_builds_the_same_record(record: type[Any]) -> None:
    import dataclasses

    from engine.mapping import _constructor

    fields = [f for f in dataclasses.fields(record) if f.init]
    values = [f"v{i}" for i in range(len(fields))]
    built, expected = _constructor(record)(*values), record(*values)
    assert type(built) is record
    assert built == expected and repr(built) == repr(expected)
    assert hash(built) == hash(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, fields[0].name, "x")
