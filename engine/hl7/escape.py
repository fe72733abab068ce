"""HL7 v2 escape sequences (chapter 2.7): unescape leaf values, escape them for encoding.

Delimiter escapes \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ and hex \\Xhh..\\ are decoded; formatting escapes
(\\.br\\ and friends) become plain-text equivalents; highlighting \\H\\ \\N\\ is dropped; any other
sequence (\\Cxxyy\\, \\Mxxyyzz\\, \\Zxx\\, malformed ones) is kept verbatim so nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The five encoding characters of a message (MSH-1 and MSH-2), plus the 2.7 truncation char."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as written: component, repetition, escape, subcomponent (+ truncation)."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_DELIMITERS = Delimiters()

_FORMATTING = {".br": "\n", ".sp": "\n", ".fi": "", ".nf": "", ".in": "", ".ti": "",
               ".sk": " ", ".ce": "\n", "H": "", "N": ""}


def _hex_to_text(digits: str) -> str | None:
    if len(digits) % 2 or not digits:
        return None
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def unescape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Decode escape sequences in one leaf value (component or subcomponent)."""
    esc = d.escape
    if esc not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            j = value.find(esc, i)
            if j < 0:
                out.append(value[i:])
                break
            out.append(value[i:j])
            i = j
            continue
        end = value.find(esc, i + 1)
        if end < 0:  # a lone escape char: keep it literally
            out.append(value[i:])
            break
        seq = value[i + 1:end]
        replacement: str | None
        if seq == "F":
            replacement = d.field
        elif seq == "S":
            replacement = d.component
        elif seq == "T":
            replacement = d.subcomponent
        elif seq == "R":
            replacement = d.repetition
        elif seq == "E":
            replacement = esc
        elif seq == "P" and d.truncation:
            replacement = d.truncation
        elif seq[:1] == "X":
            replacement = _hex_to_text(seq[1:])
        elif seq in _FORMATTING:
            replacement = _FORMATTING[seq]
        elif seq[:3] in (".sp", ".in", ".ti", ".sk"):
            replacement = _FORMATTING[seq[:3]]
        else:
            replacement = None
        out.append(value[i:end + 1] if replacement is None else replacement)
        i = end + 1
    return "".join(out)


def escape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Escape one leaf value so that it survives encoding (delimiters, CR and LF)."""
    specials: tuple[str, ...] = (d.escape, d.field, d.component, d.subcomponent, d.repetition,
                                 "\r", "\n")
    if d.truncation:
        specials = (*specials, d.truncation)
    if not any(s in value for s in specials):
        return value
    esc = d.escape
    table = {
        d.escape: f"{esc}E{esc}",
        d.field: f"{esc}F{esc}",
        d.component: f"{esc}S{esc}",
        d.subcomponent: f"{esc}T{esc}",
        d.repetition: f"{esc}R{esc}",
        "\r": f"{esc}X0D{esc}",
        "\n": f"{esc}X0A{esc}",
    }
    if d.truncation:
        table[d.truncation] = f"{esc}P{esc}"
    return "".join(table.get(c, c) for c in value)
