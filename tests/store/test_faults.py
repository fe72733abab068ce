"""Database faults: AR 207 "retry", nothing half-written, and recovery when the store returns."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.store.conftest import Registry, make_registry
from tests.store.messages import Dose, vxu


def msa_and_codes(response: bytes) -> tuple[str, list[str]]:
    segments = response.decode().split("\r")
    ack = next(s for s in segments if s.startswith("MSA|")).split("|")[1]
    return ack, [s.split("|")[3].split("^")[0] for s in segments if s.startswith("ERR|")]


@contextlib.contextmanager
def failing(registry: Registry, when: str, match: str = "") -> Iterator[None]:
    """Make the store fail at commit, or at the first statement containing `match`."""
    engine = registry.repo.engine

    def boom(*_args: Any, **_kwargs: Any) -> None:
        raise OperationalError("injected", {}, ConnectionError("injected fault"))

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if match in statement:
            boom()

    target = (("commit", boom) if when == "commit"
              else ("before_cursor_execute", on_statement))
    event.listen(engine, *target)
    try:
        yield
    finally:
        event.remove(engine, *target)


@pytest.mark.parametrize("when,match", [
    ("commit", ""),
    ("statement", "INSERT INTO immunization_event"),
    ("statement", "INSERT INTO event_observation"),
], ids=["commit-fails", "fails-before-dose", "fails-mid-dose"])
def test_store_failure_answers_ar_207_and_writes_nothing(registry: Registry, when: str,
                                                         match: str) -> None:
    """A failure anywhere in the transaction rolls back everything and asks for a retry."""
    registry.send(vxu("C0", mr="OTHER", family="Other"))
    before = registry.counts()
    message = vxu("C1", doses=[Dose(key="K1", obx=["OBX|1|NM|30973-2^Dose^LN|1|1||||||F"])])
    with failing(registry, when, match):
        assert msa_and_codes(registry.send(message)) == ("AR", ["207"])
    assert registry.counts() == before


def test_store_recovers_after_a_failure(registry: Registry) -> None:
    """The resend after a 207 is processed normally (the 207 did not consume MSH-10)."""
    message = vxu("C1")
    with failing(registry, "commit"):
        registry.send(message)
    assert msa_and_codes(registry.send(message)) == ("AA", [])
    assert registry.counts()["patient"] == 1


class Proxy:
    """A TCP proxy the test owns: `cut()` drops every connection and refuses new ones."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.down = True
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.cut()
        self.listener.close()
        self.thread.join(timeout=5)


def test_database_connections_dropped_mid_stream(database_url: str) -> None:
    """PostgreSQL cut off mid-stream: AR 207 while down, no partial rows, AA after it returns."""
    if not database_url.startswith("postgresql"):
        pytest.skip("connection drops apply to a networked database")
    url = make_url(database_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    registry = make_registry(url.set(host="127.0.0.1", port=proxy.port)
                             .render_as_string(hide_password=False))
    try:
        outcomes = []
        for i in range(12):
            if i == 4:
                proxy.cut()
            if i == 8:
                proxy.restore()
            message = vxu(f"S{i}", mr=f"MR{i}", family=f"Fam{i}",
                          doses=[Dose(key=f"K{i}"), Dose(key=f"L{i}", cvx="03")])
            outcomes.append(msa_and_codes(registry.send(message)))
        assert outcomes[:4] == [("AA", [])] * 4
        assert outcomes[4:8] == [("AR", ["207"])] * 4
        assert outcomes[8:] == [("AA", [])] * 4
        counts = registry.counts()
        # Exactly the acknowledged messages are stored, each completely.
        assert (counts["patient"], counts["immunization_event"], counts["message_log"]) == (
            8, 16, 8)
        # The senders' retries of the refused messages are processed normally.
        for i in range(4, 8):
            message = vxu(f"S{i}", mr=f"MR{i}", family=f"Fam{i}",
                          doses=[Dose(key=f"K{i}"), Dose(key=f"L{i}", cvx="03")])
            assert msa_and_codes(registry.send(message)) == ("AA", [])
        assert registry.counts()["patient"] == 12
    finally:
        registry.bundle.close()
        proxy.close()
