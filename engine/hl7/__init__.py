"""HL7 v2 ER7 handling: parser/encoder, escapes, character sets, date/time values."""

from engine.hl7.charset import Header, decode, peek_header
from engine.hl7.er7 import Message, Segment, encode, encode_segment, parse, split_segments
from engine.hl7.escape import DEFAULT_DELIMITERS, Delimiters, escape, unescape

__all__ = [
    "DEFAULT_DELIMITERS",
    "Delimiters",
    "Header",
    "Message",
    "Segment",
    "decode",
    "encode",
    "encode_segment",
    "escape",
    "parse",
    "peek_header",
    "split_segments",
    "unescape",
]
