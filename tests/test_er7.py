"""The ER7 parser and encoder: delimiters, structure, escapes, errors, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import MessageParseError
from engine.hl7 import Delimiters, encode, escape, parse, unescape
from engine.hl7.er7 import SegmentTree
from engine.hl7.escape import DEFAULT_DELIMITERS

VXU = (
    "MSH|^~\\&|EHR|CLINIC|CAIR2|CAIR2|20240101120000-0800||VXU^V04^VXU_V04|CTL-1|P|2.5.1|||ER|AL|||||Z22^CDCPHINVS\r"
    "PID|1||12345^^^CLINIC^MR~999^^^CAIR2^SR||TEST^ANN^Q^^^^L~ALIAS^A^^^^^A||20200101|F\r"
    "RXA|0|1|20240101|20240101|08^HepB^CVX|0.5|mL^mL^UCUM||00^New^NIP001\r"
)


def test_fields_are_numbered_as_in_the_standard() -> None:
    """PID-5 is field 5; MSH-9 is field 9 because MSH-1 is the separator itself."""
    msg = parse(VXU)
    assert msg.msh.field(1) == "|"
    assert msg.msh.field(2) == "^~\\&"
    assert msg.msh.value(9, 1) == "VXU"
    assert msg.msh.value(9, 2) == "V04"
    assert msg.msh.value(21, 1) == "Z22"
    pid = msg.first("PID")
    assert pid is not None
    assert pid.value(5, 1) == "TEST"
    assert pid.value(7) == "20200101"


@pytest.mark.parametrize(
    ("field", "component", "subcomponent", "repetition", "expected"),
    [
        (3, 1, 1, 1, "12345"),
        (3, 4, 1, 1, "CLINIC"),
        (3, 5, 1, 2, "SR"),
        (5, 1, 1, 2, "ALIAS"),
        (5, 7, 1, 2, "A"),
        (3, 1, 1, 3, ""),
        (3, 9, 1, 1, ""),
        (40, 1, 1, 1, ""),
    ],
    ids=["first", "component", "second-rep", "alias", "alias-type", "missing-rep",
         "missing-comp", "missing-field"],
)
def test_value_reads_any_leaf(field: int, component: int, subcomponent: int, repetition: int,
                              expected: str) -> None:
    """Segment.value reads field/rep/comp/sub and returns "" for anything absent."""
    pid = parse(VXU).first("PID")
    assert pid is not None
    assert pid.value(field, component, subcomponent, repetition) == expected


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_any_segment_ending_is_accepted(ending: str) -> None:
    """CR, LF and CRLF segment endings give the same segments."""
    msg = parse(VXU.replace("\r", ending))
    assert [s.id for s in msg] == ["MSH", "PID", "RXA"]


def test_blank_lines_and_nul_padding_are_ignored() -> None:
    """Blank lines and NUL-only lines between segments are not segments."""
    msg = parse(VXU.replace("\r", "\r\r\x00\r"))
    assert len(msg) == 3


def test_custom_delimiters_are_read_from_msh() -> None:
    """A message using # as component separator and ! as field separator parses correctly."""
    msg = parse("MSH!#~\\&!APP!FAC!!!!!VXU#V04!1!P!2.5.1\rPID!1!!A#B\r")
    assert msg.delimiters == Delimiters("!", "#", "~", "\\", "&")
    pid = msg.first("PID")
    assert pid is not None and pid.value(3, 2) == "B"


def test_the_usual_delimiters_are_one_shared_value() -> None:
    """`|^~\\&` (the usual case) gives DEFAULT_DELIMITERS itself, so a check for the usual
    delimiters is an identity test; a truncation character (2.7) gives a value of its own."""
    assert parse("MSH|^~\\&|APP|FAC\rPID|1\r").delimiters is DEFAULT_DELIMITERS
    seven = parse("MSH|^~\\&#|APP|FAC\rPID|1\r").delimiters
    assert seven is not DEFAULT_DELIMITERS and seven.truncation == "#"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", 100),
        ("PID|1||X\r", 100),
        ("MSH|^~\\|APP\r", 102),
        ("MSH|^^\\&|A\r", 102),
        ("MSH|^~\\&amp;|A|B\r", 102),
        ("MSH|^~\\&|A\rpid|1\r", 100),
        ("MSH|^~\\&|A\rPIDX|1\r", 100),
        ("MSH|^~\\&|A\rMSH|^~\\&|B\r", 100),
    ],
    ids=["empty", "no-msh", "short-msh2", "repeated-delimiter", "html-escaped-header",
         "lower-case-id", "long-id", "two-msh"],
)
def test_unparseable_text_raises_our_error_with_a_code(text: str, code: int) -> None:
    """Unreadable messages raise MessageParseError with a 0357 code, nothing else."""
    with pytest.raises(MessageParseError) as info:
        parse(text)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A\\F\\B", "A|B"),
        ("A\\S\\B\\T\\C\\R\\D\\E\\", "A^B&C~D\\"),
        ("\\X4D\\", "M"),
        ("\\XC3B1\\", "ñ"),
        ("line\\.br\\next", "line\nnext"),
        ("\\H\\bold\\N\\", "bold"),
        ("\\Zcustom\\", "\\Zcustom\\"),
        ("trailing\\", "trailing\\"),
        ("\\X0\\", "\\X0\\"),
    ],
    ids=["field", "all-delimiters", "hex", "hex-utf8", "line-break", "highlight",
         "unknown-kept", "lone-escape", "odd-hex-kept"],
)
def test_escape_sequences_are_decoded(raw: str, expected: str) -> None:
    """Delimiter, hex and formatting escapes decode; unknown ones are kept verbatim."""
    assert unescape(raw) == expected


@given(st.text())
def test_escape_then_unescape_is_identity(value: str) -> None:
    """Any text survives escape → unescape unchanged."""
    assert unescape(escape(value)) == value


_leaf = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
_component = st.lists(_leaf, min_size=1, max_size=3)
_repetition = st.lists(_component, min_size=1, max_size=3)
_field = st.lists(_repetition, min_size=1, max_size=3)
_segment_id = st.sampled_from(["PID", "PD1", "NK1", "ORC", "RXA", "RXR", "OBX", "ZZ1"])


@st.composite
def _segments(draw: st.DrawFn) -> list[SegmentTree]:
    msh: SegmentTree = [[[["MSH"]]], [[["|"]]], [[["^~\\&"]]],
                        *draw(st.lists(_field, min_size=1, max_size=12))]
    others: list[SegmentTree] = [
        [[[[draw(_segment_id)]]], *draw(st.lists(_field, min_size=1, max_size=10))]
        for _ in range(draw(st.integers(0, 5)))
    ]
    return [msh, *others]


@given(_segments())
def test_parse_of_encode_is_identity(segments: list[SegmentTree]) -> None:
    """parse(encode(tree)).tree() == tree for generated messages with arbitrary text."""
    assert parse(encode(segments)).tree() == segments


@given(st.text(max_size=300))
def test_garbage_raises_only_our_error(text: str) -> None:
    """Arbitrary text either parses or raises MessageParseError."""
    try:
        msg = parse(text)
    except MessageParseError:
        return
    for seg in msg:
        seg.tree()
