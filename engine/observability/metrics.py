"""Prometheus metrics, all registered on a registry the caller injects (tests get their own).

Labels carry only codes and names from closed sets (message type, MSA-1, 0357 code, reason,
stage), never identifiers or patient data, so label cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The engine's metric families."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "iz_messages", "Messages answered, by message type and MSA-1 code",
            ["message_type", "ack_code"], registry=r)
        self.errors = Counter(
            "iz_response_errors", "ERR segments sent, by HL7 0357 code and severity",
            ["code", "severity"], registry=r)
        self.frame_errors = Counter(
            "iz_frame_errors", "MLLP framing problems, by reason", ["reason"], registry=r)
        self.stage_seconds = Histogram(
            "iz_stage_seconds", "Time spent per pipeline stage", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.active_connections = Gauge(
            "iz_active_connections", "Open MLLP connections", registry=r,
            multiprocess_mode="livesum")  # summed over live workers (engine.workers)
        self.connections = Counter(
            "iz_connections", "MLLP connections accepted or refused", ["outcome"], registry=r)
        self.skipped_bytes = Counter(
            "iz_mllp_skipped_bytes", "Bytes outside MLLP frames that were discarded", registry=r)
