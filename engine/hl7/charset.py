"""Bytes → text by MSH-18, and a best-effort header peek that works on any bytes.

HL7 table 0211 names the character set in MSH-18. We honour ``ASCII``, ``8859/1`` and
``UNICODE UTF-8`` (also the common spellings ``UTF-8``/``UNICODE``). An empty MSH-18 means the
HL7 default (ASCII); since UTF-8 is a strict superset and is what EHRs really send, an empty
MSH-18 decodes as UTF-8. Bytes invalid in the declared set raise `MessageDecodeError` with the
segment/field where the first bad byte sits; they never raise anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import Location, MessageDecodeError

CHARSETS: dict[str, str] = {
    "": "utf-8",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "ISO-8859-1": "latin-1",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
}


def declared_charset(msh18: str, component_sep: str = "^") -> str:
    """The MSH-18 value as a table 0211 name (first component, upper case)."""
    return msh18.split(component_sep)[0].strip().upper()


def codec_for(msh18: str, component_sep: str = "^") -> str | None:
    """The Python codec for an MSH-18 value; None when we do not support it."""
    codec = CHARSETS.get(msh18)  # fast path: already a table 0211 name, one component
    if codec is not None and component_sep not in msh18:
        return codec
    return CHARSETS.get(declared_charset(msh18, component_sep))


def response_codec(charset: str, component_sep: str = "^") -> str:
    """The codec a response to a request declaring MSH-18 `charset` is encoded in: the
    request's own, UTF-8 when it declared none or one we do not support."""
    return codec_for(charset, component_sep) or "utf-8"


@dataclass(frozen=True, slots=True)
class Header:
    """MSH fields read without parsing the message; every value may be "" when unreadable."""

    field_sep: str = "|"
    component_sep: str = "^"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    message_type: str = ""
    trigger_event: str = ""
    processing_id: str = ""
    version: str = ""
    charset: str = ""
    profile: str = ""
    responsible_sending_org: str = ""
    responsible_receiving_org: str = ""

    @property
    def readable(self) -> bool:
        return bool(self.message_type or self.control_id)


def _first_line(data: bytes) -> bytes:
    start = data.find(b"MSH")
    if start < 0:
        return b""
    end = data.find(b"\r", start)
    if end < 0:
        end = len(data)
    lf = data.find(b"\n", start, end)
    return data[start:lf if lf >= 0 else end]


_HEADER_FIELDS = 23  # MSH-1 .. MSH-23: parts[0] .. parts[22]


def peek_header(data: bytes) -> Header:
    """Read MSH fields from raw bytes, never failing (used to answer even unparseable frames)."""
    line = _first_line(data)
    if len(line) < 8:
        return Header()
    text = line.decode("latin-1")
    fs = text[3]
    if fs.isalnum() or fs.isspace():
        return Header()
    parts = text.split(fs)
    codec = codec_for(parts[17]) if len(parts) > 17 else "utf-8"
    if codec not in (None, "latin-1") and not line.isascii():
        # Header values are echoed into our response (MSH-5/6, MSA-2): read them in the
        # declared character set so a UTF-8 "Niño" is not turned into mojibake. (ASCII bytes
        # read the same in every supported set.)
        parts = line.decode(str(codec), errors="replace").split(fs)
    if len(parts) < _HEADER_FIELDS:
        parts += [""] * (_HEADER_FIELDS - len(parts))
    enc = parts[1]
    cs = enc[0] if enc and not enc[0].isalnum() and enc[0] != fs else "^"
    msg_type = parts[8].split(cs, 2)  # MSH-9.1 and MSH-9.2

    return Header(
        field_sep=fs,
        component_sep=cs,
        sending_application=parts[2][:199],
        sending_facility=parts[3][:199],
        receiving_application=parts[4][:199],
        receiving_facility=parts[5][:199],
        control_id=parts[9][:199],
        message_type=msg_type[0][:199],
        trigger_event=msg_type[1][:199] if len(msg_type) > 1 else "",
        processing_id=parts[10].split(cs, 1)[0][:199],
        version=parts[11].split(cs, 1)[0][:199],
        charset=parts[17][:199],
        profile=parts[20].split(cs, 1)[0][:199],
        responsible_sending_org=parts[21][:199],
        responsible_receiving_org=parts[22][:199],
    )


def _location_of(data: bytes, offset: int, field_sep: int) -> Location:
    before = data[:offset].replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    lines = before.split(b"\r")
    seq_counts: dict[bytes, int] = {}
    for line in lines:
        seq_counts[line[:3]] = seq_counts.get(line[:3], 0) + 1
    current = lines[-1]
    seg_id = current[:3]
    field_no = current.count(bytes([field_sep]))
    if seg_id == b"MSH":
        field_no += 1
    try:
        name = seg_id.decode("ascii")
    except UnicodeDecodeError:
        name = ""
    return Location(name if name.isalnum() and len(name) == 3 else "",
                    seq_counts.get(seg_id, 1), field_no)


def decode(data: bytes, header: Header | None = None) -> str:
    """Decode a frame's bytes per its MSH-18; raises MessageDecodeError with a location."""
    header = header or peek_header(data)
    codec = codec_for(header.charset, header.component_sep)
    if codec is None:
        declared = declared_charset(header.charset, header.component_sep)
        raise MessageDecodeError(f"MSH-18 character set '{declared[:20]}' is not supported",
                                 Location("MSH", 1, 18))
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        declared = declared_charset(header.charset, header.component_sep)
        fs = ord(header.field_sep) if len(header.field_sep) == 1 else 0x7C
        raise MessageDecodeError(
            f"Byte 0x{data[exc.start]:02X} is not valid {declared or 'UTF-8'} text",
            _location_of(data, exc.start, fs)) from None
