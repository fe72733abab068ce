"""The engine's one error tree, and the `Issue` value every check returns.

```
IzEngineError                       anything the engine raises on purpose
├── ConfigError                     config.yaml / environment problems (all reported at once)
├── FrameError                      MLLP framing (reason label for metrics)
│   └── FrameTooLarge               frame over max_frame_bytes
├── StoreError                      the registry store failed (answered AR 207 "retry")
│   └── StoreUnavailable            database unreachable
└── HL7Error                        ACK-able: carries table 0357 code, severity, ERR-2 location
    ├── MessageDecodeError  (102)   bytes not valid in the MSH-18 character set
    ├── MessageParseError   (100/102) no MSH, bad delimiters, bad segment id
    ├── UnsupportedMessageType (200)
    ├── UnsupportedEventCode   (201)
    ├── UnsupportedProcessingId (202)
    ├── UnsupportedVersionId   (203)
    ├── UnknownKeyIdentifier   (204) update/delete of an event the sender never sent
    ├── DuplicateKeyIdentifier (205) same sender + MSH-10 with different content
    └── ApplicationInternalError (207) the pipeline's catch-all; never leaks internals
```

Errors are data: an `HL7Error` converts to an `Issue`, and only `engine.responses` renders
Issues as MSA/ERR/QAK. Foreign exceptions (UnicodeDecodeError, SQLAlchemy, OSError) are
translated at the boundary that meets them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    """HL7 table 0516 (ERR-4)."""

    ERROR = "E"
    WARNING = "W"
    INFORMATION = "I"


@dataclass(frozen=True, slots=True)
class Location:
    """An ERR-2 error location (ERL): SEG^seq^field^rep^comp^sub; zeros mean "not known"."""

    segment: str = ""
    sequence: int = 0
    field: int = 0
    repetition: int = 0
    component: int = 0
    subcomponent: int = 0

    def render(self, component_sep: str = "^") -> str:
        """Render as ERL, trailing unknown parts omitted (``PID^1^5``, ``MSH^1^12``)."""
        if not self.segment:
            return ""
        parts = [self.segment, self.sequence or 1, self.field, self.repetition,
                 self.component, self.subcomponent]
        while len(parts) > 2 and not parts[-1]:
            parts.pop()
        return component_sep.join(str(p) for p in parts)


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding about a message: becomes one ERR segment.

    `code` is HL7 table 0357 (ERR-3), `application_code` CDC table 0533 (ERR-5), `text` the
    ERR-8 user message. Texts never carry patient data values, only positions and codes.
    """

    code: int
    severity: Severity
    location: Location
    text: str
    application_code: int | None = None
    rule: str = ""


class IzEngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(IzEngineError):
    """Configuration is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class FrameError(IzEngineError):
    """MLLP framing problem; `reason` is a short metric label."""

    reason = "frame"


class FrameTooLarge(FrameError):
    reason = "too_large"


class StoreError(IzEngineError):
    """The registry store failed; the sender should retry (AR 207)."""


class StoreUnavailable(StoreError):
    """The database could not be reached."""


class HL7Error(IzEngineError):
    """An error the engine answers with an ACK/RSP: table 0357 code, severity and location."""

    code: int = 207
    severity: Severity = Severity.ERROR
    application_code: int | None = None

    def __init__(self, text: str, location: Location | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.location = location or Location()

    def to_issue(self) -> Issue:
        return Issue(self.code, self.severity, self.location, self.text, self.application_code,
                     rule=type(self).__name__)


class MessageDecodeError(HL7Error):
    code = 102
    application_code = 4


class MessageParseError(HL7Error):
    code = 100

    def __init__(self, text: str, location: Location | None = None, code: int = 100) -> None:
        super().__init__(text, location)
        self.code = code


class UnsupportedMessageType(HL7Error):
    code = 200


class UnsupportedEventCode(HL7Error):
    code = 201


class UnsupportedProcessingId(HL7Error):
    code = 202


class UnsupportedVersionId(HL7Error):
    code = 203


class UnknownKeyIdentifier(HL7Error):
    code = 204


class DuplicateKeyIdentifier(HL7Error):
    code = 205


class ApplicationInternalError(HL7Error):
    code = 207
