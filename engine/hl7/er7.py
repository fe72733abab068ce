"""ER7 (pipe-and-hat) parser and encoder.

Parsing is lazy where it pays: `parse` only splits the text into segments and reads the MSH
delimiters; a segment splits into fields the first time a field is asked for, and a field
into repetitions/components/subcomponents only when a value is read. Most messages are read
for a few dozen values, so the full tree is rarely built (`bench/parse.py` measures both).

Field numbering follows HL7: ``seg.field(5)`` is PID-5. For MSH, field 1 is the field separator
and field 2 the encoding characters, so MSH-9 is ``msh.field(9)`` as in the standard.

A parsed tree (`Segment.tree()`) is fields → repetitions → components → subcomponents, every
leaf unescaped; `encode_segment` turns such a tree back into text, so
``parse(encode(tree)) == tree`` for any tree of non-empty lists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from engine.errors import Location, MessageParseError
from engine.hl7.escape import DEFAULT_DELIMITERS, Delimiters, escape, unescape

Leaf = str
ComponentTree = list[Leaf]  # subcomponents
RepetitionTree = list[ComponentTree]  # components
FieldTree = list[RepetitionTree]  # repetitions
SegmentTree = list[FieldTree]  # fields, index 0 = segment id as [[["PID"]]]

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")


class Segment:
    """One segment: an immutable value that splits itself lazily."""

    __slots__ = ("_fields", "delimiters", "id", "raw")

    def __init__(self, raw: str, delimiters: Delimiters = DEFAULT_DELIMITERS) -> None:
        self.raw = raw
        self.id = raw[:3]
        self.delimiters = delimiters
        self._fields: list[str] | None = None

    def __repr__(self) -> str:
        return f"Segment({self.id!r}, {len(self.raw)} chars)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Segment):
            return NotImplemented
        return self.raw == other.raw and self.delimiters == other.delimiters

    def __hash__(self) -> int:
        return hash(self.raw)

    @property
    def fields(self) -> list[str]:
        """Raw (escaped) field texts; index i is field i, index 0 is the segment id."""
        parts = self._fields
        if parts is None:
            parts = self.raw.split(self.delimiters.field)
            if self.id == "MSH":
                # "MSH|^~\&|A" splits as ["MSH", "^~\&", "A"]: MSH-1 is the separator itself.
                parts.insert(1, self.delimiters.field)
            self._fields = parts
        return parts

    @property
    def field_count(self) -> int:
        """Number of the last field present (trailing empty fields count as written)."""
        return len(self.fields) - 1

    def field(self, number: int) -> str:
        """Raw (escaped) text of field `number`, "" when absent."""
        parts = self.fields
        return parts[number] if 0 < number < len(parts) else ""

    def repetitions(self, number: int) -> list[str]:
        """Raw texts of each repetition of a field ([] when the field is empty)."""
        raw = self.field(number)
        if not raw:
            return []
        if self.id == "MSH" and number <= 2:
            return [raw]
        return raw.split(self.delimiters.repetition)

    def value(self, number: int, component: int = 1, subcomponent: int = 1,
              repetition: int = 1) -> str:
        """The unescaped leaf at field.rep.comp.sub (1-based); "" when absent."""
        raw = self.field(number)
        if not raw:
            return ""
        if self.id == "MSH" and number <= 2:
            return raw
        d = self.delimiters
        for sep, index in ((d.repetition, repetition), (d.component, component),
                           (d.subcomponent, subcomponent)):
            if sep in raw:
                parts = raw.split(sep)
                if index > len(parts):
                    return ""
                raw = parts[index - 1]
            elif index != 1:
                return ""
        return unescape(raw, d) if d.escape in raw else raw

    def components(self, number: int, repetition: int = 1) -> list[str]:
        """Unescaped components of one repetition (subcomponents left joined, unescaped)."""
        reps = self.repetitions(number)
        if repetition > len(reps):
            return []
        d = self.delimiters
        return [unescape(c, d) for c in reps[repetition - 1].split(d.component)]

    def field_tree(self, number: int) -> FieldTree:
        """The whole field as repetitions → components → subcomponents, leaves unescaped."""
        raw = self.field(number)
        d = self.delimiters
        if self.id == "MSH" and number <= 2:
            return [[[raw]]]
        return [[[unescape(s, d) for s in comp.split(d.subcomponent)]
                 for comp in rep.split(d.component)]
                for rep in raw.split(d.repetition)]

    def tree(self) -> SegmentTree:
        """Every field as a tree; index 0 is the segment id."""
        return [[[[self.id]]]] + [self.field_tree(i) for i in range(1, len(self.fields))]


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed message: its segments in order and its delimiters."""

    segments: tuple[Segment, ...]
    delimiters: Delimiters = field(default=DEFAULT_DELIMITERS)

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, segment_id: str) -> Segment | None:
        for seg in self.segments:
            if seg.id == segment_id:
                return seg
        return None

    def all(self, segment_id: str) -> list[Segment]:
        return [seg for seg in self.segments if seg.id == segment_id]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def tree(self) -> list[SegmentTree]:
        return [seg.tree() for seg in self.segments]


def split_segments(text: str) -> list[str]:
    """Split on CR, LF or CRLF; blank lines (and NUL/whitespace-only lines) are dropped."""
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [line for line in text.split("\r") if line.strip(" \t\x00")]


def read_delimiters(header: str) -> Delimiters:
    """Delimiters from the start of an MSH segment; raises MessageParseError if unusable."""
    if not header.startswith("MSH") or len(header) < 8:
        raise MessageParseError("Message does not start with a readable MSH segment",
                                Location("MSH", 1), code=100)
    if header.startswith("MSH|^~\\&|"):
        return DEFAULT_DELIMITERS  # the usual ones: one shared value, compared by identity
    fs = header[3]
    end = header.find(fs, 4)
    enc = header[4:end] if end >= 0 else header[4:]
    chars = (fs, *enc)
    if (len(enc) not in (4, 5) or len(set(chars)) != len(chars)
            or any(c.isalnum() or c in " \r\n" for c in chars)):
        raise MessageParseError("MSH-1/MSH-2 delimiters are not valid encoding characters",
                                Location("MSH", 1, 2), code=102)
    return Delimiters(fs, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else "")


def parse(text: str) -> Message:
    """Parse ER7 text into a Message; raises MessageParseError with the best location known."""
    lines = split_segments(text)
    if not lines:
        raise MessageParseError("Empty message", Location("MSH", 1), code=100)
    first = lines[0].lstrip(" \t\x00")
    delims = read_delimiters(first)
    lines[0] = first
    segments: list[Segment] = []
    counts: dict[str, int] = {}
    for line in lines:
        seg_id = line[:3]
        counts[seg_id] = counts.get(seg_id, 0) + 1
        if (len(line) > 3 and line[3] != delims.field) or not _SEGMENT_ID.match(seg_id):
            raise MessageParseError(f"Segment {len(segments) + 1} has no valid segment id",
                                    Location(seg_id if _SEGMENT_ID.match(seg_id) else "",
                                             counts[seg_id]), code=100)
        segments.append(Segment(line, delims))
    if sum(1 for s in segments if s.id == "MSH") > 1:
        raise MessageParseError("More than one MSH in a single message",
                                Location("MSH", 2), code=100)
    return Message(tuple(segments), delims)


def encode_field(tree: FieldTree, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    return d.repetition.join(
        d.component.join(d.subcomponent.join(escape(s, d) for s in comp) for comp in rep)
        for rep in tree)


def encode_segment(tree: SegmentTree, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Encode a segment tree (index 0 = id). For MSH, fields 1 and 2 are taken from `d`."""
    seg_id = tree[0][0][0][0]
    if seg_id == "MSH":
        rest = [encode_field(f, d) for f in tree[3:]]
        return d.field.join(["MSH", d.encoding_characters, *rest])
    return d.field.join([seg_id, *(encode_field(f, d) for f in tree[1:])])


def encode(segments: Sequence[SegmentTree], d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Encode segment trees as one message, each segment ended by CR."""
    return "".join(encode_segment(s, d) + "\r" for s in segments)


def segments_text(message: Message) -> str:
    """The message as CR-terminated text (raw segments, unchanged)."""
    return "".join(seg.raw + "\r" for seg in message.segments)
