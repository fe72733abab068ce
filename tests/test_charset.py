"""Bytes → text by MSH-18, and the header peek that answers even unreadable frames."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import MessageDecodeError
from engine.hl7 import decode, peek_header

MSH = "MSH|^~\\&|EHR|CLINIC|CAIR2|CAIR2|20240101||VXU^V04^VXU_V04|C1|P|2.5.1|||ER|AL||{cs}\r"


@pytest.mark.parametrize(
    ("charset", "encoded_name", "codec"),
    [("UNICODE UTF-8", "Ñandú 中文", "utf-8"), ("8859/1", "Müller", "latin-1"),
     ("", "Ñandú", "utf-8"), ("ASCII", "Smith", "ascii")],
    ids=["utf8", "latin1", "empty-means-utf8", "ascii"],
)
def test_msh18_selects_the_character_set(charset: str, encoded_name: str, codec: str) -> None:
    """The declared character set decodes names exactly."""
    text = MSH.format(cs=charset) + f"PID|1||1||{encoded_name}\r"
    assert decode(text.encode(codec)) == text


@pytest.mark.parametrize(
    ("data", "location"),
    [((MSH.format(cs="ASCII") + "PID|1||1||M\u00fcller\r").encode("latin-1"), "PID^1^5"),
     ((MSH.format(cs="UNICODE UTF-8") + "PID|1||1||A\r").encode() + b"NK1|1|\xff\r", "NK1^1^2"),
     ((MSH.format(cs="ASCII")).encode().replace(b"EHR", b"E\x80R"), "MSH^1^3")],
    ids=["latin1-in-ascii", "bad-utf8-in-nk1", "bad-byte-in-msh"],
)
def test_undecodable_bytes_raise_our_error_with_location(data: bytes, location: str) -> None:
    """The first bad byte is reported at its segment and field."""
    with pytest.raises(MessageDecodeError) as info:
        decode(data)
    assert info.value.location.render() == location
    assert info.value.code == 102


def test_header_peek_reads_msh_fields_without_parsing() -> None:
    """peek_header finds MSH-3..12 even when the rest of the message is garbage."""
    header = peek_header(b"\x00\x01junk" + MSH.format(cs="").encode() + b"\xff\xfe garbage")
    assert (header.sending_facility, header.control_id, header.message_type,
            header.trigger_event, header.version) == ("CLINIC", "C1", "VXU", "V04", "2.5.1")


@given(st.binary(max_size=300))
def test_peek_and_decode_never_raise_anything_else(data: bytes) -> None:
    """Any bytes: peek_header never raises; decode raises only MessageDecodeError."""
    peek_header(data)
    with contextlib.suppress(MessageDecodeError):
        decode(data)
