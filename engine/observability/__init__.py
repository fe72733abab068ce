"""Structured logging (no PHI) and Prometheus metrics on an injected registry."""
