"""ACK and RSP builders: the only place that writes MSH/MSA/ERR/QAK of a response.

Definitions live in `acks/` as data (error catalogue, ACK policy, response layouts). Findings
arrive as `Issue` values; this module chooses MSA-1 from them and renders one ERR per Issue.
The clock and the control-id generator are injected, so a response is byte-reproducible.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from engine.config import IdentityConfig
from engine.errors import Issue, Severity
from engine.hl7.charset import Header, response_codec
from engine.hl7.escape import DEFAULT_DELIMITERS, escape

ACKS_DIR = Path(__file__).resolve().parents[1] / "acks"

Clock = Callable[[], datetime]
IdGenerator = Callable[[], str]

_STANDARD_ENCODING = "^~\\&"


_local_zone: tuple[int, timezone] = (-1, UTC)


def system_clock() -> datetime:
    """Local wall-clock time with its UTC offset (MSH-7 always carries a zone).

    The same value as ``datetime.now().astimezone()``, with the local zone (offset and name)
    looked up once per second rather than on every call: offsets only change on whole seconds.
    """
    global _local_zone
    now = time.time()
    second = int(now // 1)
    cached = _local_zone
    if cached[0] != second:
        local = time.localtime(second)
        cached = _local_zone = (second, timezone(timedelta(seconds=local.tm_gmtoff),
                                                 local.tm_zone))
    return datetime.fromtimestamp(now, cached[1])


def control_id_generator(prefix: str = "IZ") -> IdGenerator:
    """Unique MSH-10 values across processes: a random node part plus a counter."""
    node = uuid.uuid4().hex[:10].upper()
    counter = itertools.count(1)
    pid = os.getpid() % 100000
    return lambda: f"{prefix}{node}{pid:05d}{next(counter):08d}"


def format_ts(moment: datetime) -> str:
    """HL7 DTM to the second with UTC offset, e.g. 20261122023100-0800."""
    if moment.tzinfo is None:
        raise ValueError("response timestamps need a time zone")
    return moment.strftime("%Y%m%d%H%M%S%z")


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Code tables 0357, 0533 and 0516 with their texts (acks/errors.yaml)."""

    hl70357: Mapping[int, str]
    cdc0533: Mapping[int, str]
    hl70516: Mapping[str, str]

    def text_0357(self, code: int) -> str:
        return self.hl70357.get(code, "Application error")

    @classmethod
    def load(cls, path: Path | None = None) -> Catalogue:
        data = _read_yaml(path or ACKS_DIR / "errors.yaml")
        return cls(
            hl70357={int(k): str(v) for k, v in data["hl70357"].items()},
            cdc0533={int(k): str(v) for k, v in data["cdc0533"].items()},
            hl70516={str(k): str(v) for k, v in data["hl70516"].items()},
        )


@dataclass(frozen=True, slots=True)
class AckPolicy:
    """How findings turn into MSA-1 (acks/policy.yaml)."""

    on_warning: str = "AE"
    on_information: str = "AA"
    severity_overrides: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> AckPolicy:
        data = _read_yaml(path or ACKS_DIR / "policy.yaml")
        policy = cls(on_warning=str(data.get("on_warning", "AE")),
                     on_information=str(data.get("on_information", "AA")),
                     severity_overrides={str(k): str(v) for k, v in
                                         (data.get("severity_overrides") or {}).items()})
        for key, value in (("on_warning", policy.on_warning),
                           ("on_information", policy.on_information)):
            if value not in ("AA", "AE"):
                raise ValueError(f"{key} must be AA or AE, not {value!r}")
        return policy

    def apply(self, issues: Iterable[Issue]) -> list[Issue]:
        """Issues with per-rule severity overrides applied."""
        if not self.severity_overrides:
            return list(issues)
        out = []
        for issue in issues:
            override = self.severity_overrides.get(issue.rule)
            if override:
                issue = Issue(issue.code, Severity(override), issue.location, issue.text,
                              issue.application_code, issue.rule)
            out.append(issue)
        return out

    def ack_code(self, issues: Sequence[Issue]) -> str:
        """MSA-1 for a processed message: AR for accept-level errors, else AE/AA by severity."""
        if any(i.severity is Severity.ERROR and i.rule in _ACCEPT_RULES for i in issues):
            return "AR"
        if any(i.severity is Severity.ERROR for i in issues):
            return "AE"
        if any(i.severity is Severity.WARNING for i in issues):
            return self.on_warning
        if issues:
            return self.on_information
        return "AA"


# Issues raised by the accept-level checks and the catch-all (see engine.errors): the message
# was not processed at all, so these always answer AR.
_ACCEPT_RULES = frozenset({"MessageDecodeError", "MessageParseError", "UnsupportedMessageType",
                           "UnsupportedEventCode", "UnsupportedProcessingId",
                           "UnsupportedVersionId", "ApplicationInternalError", "StoreError"})


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return data


# MSH-18 of a response encoded in another character set than UTF-8 (the pipeline answers in
# the request's): what a reader needs to decode it, as its table 0211 name. A response in
# UTF-8 leaves MSH-18 empty, which this engine (and most peers) read as UTF-8.
_RESPONSE_CHARSETS = {"latin-1": "8859/1", "ascii": "ASCII"}


def _response_charset(header: Header) -> str:
    """MSH-18 for a response to `header`: "" for UTF-8, else its codec's table 0211 name."""
    return _RESPONSE_CHARSETS.get(response_codec(header.charset, header.component_sep), "")


def _safe_field(raw: str, header: Header) -> str:
    """A request header field, re-usable verbatim in our (standard-delimiter) response.

    When the request used the standard delimiters the raw text is already correctly escaped;
    otherwise only the first component survives, escaped for ours.
    """
    raw = raw.replace("\r", "").replace("\n", "")
    if header.field_sep == "|" and header.component_sep == "^":
        return raw.split("|")[0]
    return escape(raw.split(header.component_sep)[0])


class ResponseBuilder:
    """Builds Z23 ACKs (and the shared MSH/MSA/ERR parts of RSPs)."""

    def __init__(self, identity: IdentityConfig, *, clock: Clock = system_clock,
                 ids: IdGenerator | None = None, catalogue: Catalogue | None = None,
                 policy: AckPolicy | None = None) -> None:
        self.identity = identity
        self.clock = clock
        self.ids = ids or control_id_generator()
        self.catalogue = catalogue or Catalogue.load()
        self.policy = policy or AckPolicy.load()
        # Per-builder caches (all derived from immutable inputs): the static text around
        # MSH-7/MSH-10 per header, the last second's MSH-7 text, and rendered ERR-3/ERR-5.
        self._msh_parts: dict[tuple[str, ...], tuple[str, str]] = {}
        self._ts_cache: tuple[timezone, datetime, datetime, str] | None = None
        self._code3: dict[int, str] = {}
        self._code5: dict[int, str] = {}

    def _timestamp(self, moment: datetime) -> str:
        """`format_ts(moment)`, re-using the text while the clock stays in the same second."""
        cached = self._ts_cache
        zone = moment.tzinfo
        if (cached is not None and type(zone) is timezone and zone == cached[0]
                and cached[1] <= moment < cached[2]):
            return cached[3]
        text = format_ts(moment)
        if type(zone) is timezone:  # a fixed offset: the text depends on the second only
            start = moment.replace(microsecond=0)
            self._ts_cache = (zone, start, start + timedelta(seconds=1), text)
        return text

    def _msh_static(self, header: Header, message_type: str,
                    profile: str) -> tuple[str, str]:
        """The MSH text before MSH-7 and after MSH-10 for a response to `header`."""
        key = (header.field_sep, header.component_sep, header.receiving_application,
               header.receiving_facility, header.sending_application, header.sending_facility,
               header.processing_id, header.responsible_receiving_org,
               header.responsible_sending_org, header.charset, message_type, profile)
        parts = self._msh_parts.get(key)
        if parts is None:
            if len(self._msh_parts) >= 4096:  # bounded: senders are few, but be safe
                self._msh_parts.clear()
            parts = self._msh_parts[key] = self._render_msh_static(header, message_type,
                                                                   profile)
        return parts

    def _render_msh_static(self, header: Header, message_type: str,
                           profile: str) -> tuple[str, str]:
        def f(raw: str) -> str:
            return _safe_field(raw, header)

        processing = header.processing_id if header.processing_id in ("P", "T", "D") else "P"
        before = [
            "MSH", _STANDARD_ENCODING,
            f(header.receiving_application) or escape(self.identity.application),
            f(header.receiving_facility) or escape(self.identity.facility),
            f(header.sending_application),
            f(header.sending_facility),
        ]
        after = [
            processing,
            "2.5.1",
            "", "", "NE", "NE", "", _response_charset(header), "", "",
            profile,
        ]
        if header.responsible_receiving_org or header.responsible_sending_org:
            after += [f(header.responsible_receiving_org), f(header.responsible_sending_org)]
        return "|".join(before) + "|", "|" + "|".join(after)

    def msh(self, header: Header, message_type: str, profile: str) -> str:
        """Our MSH for a response to `header`: sender and receiver swapped, zone-stamped."""
        before, after = self._msh_static(header, message_type, profile)
        stamp = self._timestamp(self.clock())
        return f"{before}{stamp}||{message_type}|{escape(self.ids())}{after}"

    def err(self, issue: Issue) -> str:
        """One ERR segment: ERR-2 location, ERR-3 0357, ERR-4 severity, ERR-5 0533, ERR-8 text."""
        d = DEFAULT_DELIMITERS
        code3 = self._code3.get(issue.code)
        if code3 is None:
            code3 = self._code3[issue.code] = (
                f"{issue.code}^{escape(self.catalogue.text_0357(issue.code), d)}^HL70357")
        code5 = ""
        if issue.application_code is not None:
            code5 = self._code5.get(issue.application_code, "")
            if not code5:
                text5 = self.catalogue.cdc0533.get(issue.application_code, "")
                code5 = self._code5[issue.application_code] = (
                    f"{issue.application_code}^{escape(text5, d)}^HL70533")
        return "|".join(["ERR", "", issue.location.render(), code3, issue.severity.value,
                         code5, "", "", escape(issue.text, d)])

    def ack(self, header: Header, issues: Sequence[Issue], ack_code: str | None = None) -> str:
        """A complete Z23 ACK for a request header and its findings (CR-terminated segments)."""
        issues = self.policy.apply(issues)
        code = ack_code or self.policy.ack_code(issues)
        event = header.trigger_event if header.trigger_event.isalnum() else ""
        message_type = f"ACK^{event}^ACK" if event else "ACK"
        segments = [self.msh(header, message_type, "Z23^CDCPHINVS"),
                    f"MSA|{code}|{_safe_field(header.control_id, header)}"]
        segments += [self.err(i) for i in issues]
        return "".join(s + "\r" for s in segments)
