"""Builders for synthetic VXU messages used by the store tests (no real patient data)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Dose:
    """One order group to put in a test VXU."""

    key: str = "EV1"
    cvx: str = "08"
    on: str = "20240115"
    action: str = "A"
    lot: str = "LOT1"
    source: str = "00"
    obx: Sequence[str] = field(default_factory=tuple)
    refusal: bool = False

    def segments(self) -> list[str]:
        orc = f"ORC|RE||{self.key}^EHR-A" if self.key else "ORC|RE||"
        if self.refusal:
            rxa = (f"RXA|0|1|{self.on}||{self.cvx}^vaccine^CVX|999||||||||||||00^Parental "
                   f"decision^NIP002||RE|{self.action}")
            return [orc, rxa]
        src = f"{self.source}^source^NIP001"
        rxa = (f"RXA|0|1|{self.on}||{self.cvx}^vaccine^CVX|0.5|mL^mL^UCUM||{src}|"
               f"7^Doc^Ann^^^^^^AUTH^L^^^PRN|^^^SITE1||||{self.lot}|20301231|MSD^Merck^MVX"
               f"|||CP|{self.action}")
        obx = [f"OBX|{i}|CE|64994-7^Eligibility^LN|{i}|V02^Medicaid^HL70064||||||F|||"
               f"{self.on}|||VXC40^per imm^CDCPHINVS" if o == "VFC" else o
               for i, o in enumerate(self.obx, start=1)]
        return [orc, rxa, "RXR|C28161^IM^NCIT|LD^Left Deltoid^HL70163", *obx]


def vxu(control_id: str, *, org: str = "ORG-A", app: str = "EHR", mr: str = "MR100",
        authority: str = "ORG-A-MRN", family: str = "Testfamily", given: str = "Testgiven",
        dob: str = "20200101", sex: str = "F", doses: Sequence[Dose] = (Dose(),),
        pd1: str = "PD1|||||||||||02^Reminder^HL70215|N|20240101|||A|20240101|20240101",
        pid: str | None = None, extra_names: str = "") -> str:
    """A complete VXU^V04 Z22 message (CR-terminated segments)."""
    names = f"{family}^{given}^M^^^^L{extra_names}"
    segments = [
        f"MSH|^~\\&|{app}|{org}|IIS|CAIR2|20240115120000||VXU^V04^VXU_V04|{control_id}|P|"
        f"2.5.1|||ER|AL|||||Z22^CDCPHINVS|{org}",
        pid or (f"PID|1||{mr}^^^{authority}^MR||{names}|Mom^Maiden^^^^^M|{dob}|{sex}||"
                f"2106-3^White^CDCREC|1 Main St^^Town^CA^90001^USA^H||^PRN^PH^^^555^5551234|||"
                f"||||||2186-5^Not Hispanic^CDCREC"),
        pd1,
        "NK1|1|Parent^Pat^^^^^L|MTH^Mother^HL70063|1 Main St^^Town^CA^90001^USA^H|"
        "^PRN^PH^^^555^5551234",
    ]
    for dose in doses:
        segments += dose.segments()
    return "\r".join(s for s in segments if s) + "\r"
