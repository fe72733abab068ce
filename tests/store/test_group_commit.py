"""Group commit: messages share a transaction and a COMMIT, yet each stays all-or-nothing.

Batches are made deterministic by giving the store a writer that lingers until `size`
messages are waiting, then sending that many messages from as many threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError

from engine.config import ServerConfig
from engine.server import MllpServer
from engine.service import AsyncPipeline
from engine.store.writer import BatchAborted, GroupCommitter, Tx
from tests.store.conftest import Registry
from tests.store.messages import Dose, vxu

SB, EB = b"\x0b", b"\x1c\r"


def msa(response: bytes) -> tuple[str, list[str]]:
    segments = response.decode().split("\r")
    ack = next(s for s in segments if s.startswith("MSA|")).split("|")[1]
    return ack, [s.split("|")[3].split("^")[0] for s in segments if s.startswith("ERR|")]


def batched(registry: Registry, size: int) -> list[int]:
    """Route the registry's store through a writer that commits exactly `size` at a time."""
    sizes: list[int] = []
    writer = GroupCommitter(registry.repo.engine, max_batch=size, linger_s=10.0,
                            on_batch=sizes.append)
    old = registry.bundle.writer
    registry.bundle.handlers["VXU"].writer = writer  # type: ignore[attr-defined]
    registry.bundle.journal.writer = writer  # type: ignore[attr-defined]
    old.close()
    registry.bundle = type(registry.bundle)(
        registry.bundle.handlers, registry.bundle.journal, registry.bundle.executor_threads,
        _closing(writer, registry.bundle.close), registry.bundle.repository, writer)
    return sizes


def _closing(writer: GroupCommitter, close: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        writer.close()
        close()
    return both


def send_together(registry: Registry, messages: list[str]) -> list[bytes]:
    """Send each message on its own thread at once; answers in the messages' order."""
    answers: list[bytes] = [b""] * len(messages)
    barrier = threading.Barrier(len(messages))

    def send(i: int) -> None:
        barrier.wait()
        answers[i] = registry.send(messages[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(messages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


@contextlib.contextmanager
def fail_statement(registry: Registry, statement: str, marker: str,
                   error: type[Exception] = OperationalError, times: int = 1) -> Iterator[None]:
    """Raise `error` on the first `times` statements containing `statement` whose
    parameters mention `marker` (one message's data)."""
    engine = registry.repo.engine
    left = [times]

    def on_statement(_conn: Any, _cursor: Any, sql: str, params: Any, *_rest: Any) -> None:
        if statement in sql and marker in repr(params) and left[0] > 0:
            left[0] -= 1
            raise error("injected", {}, ConnectionError("injected fault"))

    event.listen(engine, "before_cursor_execute", on_statement)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)


def three(prefix: str) -> list[str]:
    return [vxu(f"{prefix}{i}", mr=f"MR{prefix}{i}", family=f"Fam{'abc'[i]}",
                doses=[Dose(key=f"K{prefix}{i}"), Dose(key=f"L{prefix}{i}", cvx="03")])
            for i in range(3)]


def test_batch_commits_several_messages_at_once(registry: Registry) -> None:
    """Three waiting messages share one COMMIT and are all stored and answered AA."""
    sizes = batched(registry, 3)
    answers = send_together(registry, three("B"))
    assert [msa(a) for a in answers] == [("AA", [])] * 3
    assert sizes == [3]
    assert registry.counts()["patient"] == 3


def test_failure_mid_message_rolls_back_only_that_message(registry: Registry) -> None:
    """A statement failing in the middle of one message's work undoes that message alone:
    it is answered AR 207 and leaves no row; its batch companions are stored and AA."""
    sizes = batched(registry, 3)
    messages = three("M")
    with fail_statement(registry, "INSERT INTO immunization_event", "KM1"):
        answers = send_together(registry, messages)
    assert sizes == [3]
    assert [msa(a) for a in answers] == [("AA", []), ("AR", ["207"]), ("AA", [])]
    counts = registry.counts()
    assert (counts["patient"], counts["immunization_event"], counts["message_log"]) == (2, 4, 2)
    assert registry.repo.message_log("EHR|ORG-A", "M1") == []


def test_unique_key_race_reruns_the_message_in_its_savepoint(registry: Registry) -> None:
    """An IntegrityError (another engine claimed a key first) re-runs that message only;
    the re-run succeeds and every message of the batch is stored once."""
    sizes = batched(registry, 3)
    with fail_statement(registry, "INSERT INTO event_key", "KR1", error=IntegrityError):
        answers = send_together(registry, three("R"))
    assert sizes == [3]
    assert [msa(a) for a in answers] == [("AA", [])] * 3
    counts = registry.counts()
    assert (counts["patient"], counts["event_key"], counts["message_log"]) == (3, 6, 3)


@contextlib.contextmanager
def failing_on_the_server(registry: Registry, statement: str, marker: str) -> Iterator[None]:
    """Rewrite the first statement containing `statement` whose parameters mention `marker`
    into one the database itself rejects (an unknown table): the failure comes back from the
    server, after the statement was sent — on PostgreSQL, from a queued pipeline statement."""
    left = [1]

    def rewrite(_conn: Any, _cursor: Any, sql: str, params: Any, *_rest: Any) -> Any:
        if statement in sql and marker in repr(params) and left[0] > 0:
            left[0] -= 1
            sql = sql.replace(statement, statement.replace("INTO ", "INTO iz_no_such_"), 1)
        return sql, params

    engine = registry.repo.engine
    event.listen(engine, "before_cursor_execute", rewrite, retval=True)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", rewrite)


def test_server_side_failure_is_charged_to_its_own_message(registry: Registry) -> None:
    """A statement the database rejects after it was sent (PostgreSQL: queued, its error
    read back later) fails its own message — AR 207, nothing of it stored — while the other
    messages of the batch, before and after it, are stored and AA."""
    sizes = batched(registry, 3)
    with failing_on_the_server(registry, "INSERT INTO message_log", "Q1"):
        answers = send_together(registry, three("Q"))
    assert sizes == [3]
    assert [msa(a) for a in answers] == [("AA", []), ("AR", ["207"]), ("AA", [])]
    counts = registry.counts()
    assert (counts["patient"], counts["immunization_event"], counts["message_log"]) == (2, 4, 2)
    assert registry.repo.message_log("EHR|ORG-A", "Q1") == []


def test_commit_failure_answers_207_to_the_whole_batch_and_stores_nothing(
        registry: Registry) -> None:
    """When the batch's COMMIT fails, every message in it is answered AR 207 and none of
    them is stored; the senders' resends are then processed normally."""
    registry.send(vxu("C0", mr="OTHER", family="Other"))
    before = registry.counts()
    sizes = batched(registry, 3)
    engine = registry.repo.engine

    def boom(*_args: Any) -> None:
        raise OperationalError("injected", {}, ConnectionError("commit lost"))

    messages = three("G")
    event.listen(engine, "commit", boom)
    try:
        answers = send_together(registry, messages)
    finally:
        event.remove(engine, "commit", boom)
    assert sizes == [3]
    assert [msa(a) for a in answers] == [("AR", ["207"])] * 3
    assert registry.counts() == before
    assert [msa(a) for a in send_together(registry, messages)] == [("AA", [])] * 3


def test_retransmission_in_the_same_batch_is_stored_once(registry: Registry) -> None:
    """Two copies of one message in one batch: stored once, both get the same bytes."""
    sizes = batched(registry, 3)
    first, other = three("D")[:2]
    answers = send_together(registry, [first, other, first])
    assert sizes == [3]
    assert answers[0] == answers[2] and msa(answers[0]) == ("AA", [])
    assert registry.counts()["message_log"] == 2


def test_unit_of_work_sees_rollback_and_commit_hooks(registry: Registry) -> None:
    """`after_commit` runs for a released savepoint of a committed batch, never otherwise."""
    writer = GroupCommitter(registry.repo.engine, max_batch=2, linger_s=10.0)
    ran: list[str] = []

    def good(tx: Tx) -> str:
        tx.after_commit(lambda: ran.append("good"))
        return "ok"

    def bad(tx: Tx) -> str:
        tx.after_commit(lambda: ran.append("bad"))
        raise ValueError("a bug in one message's work")

    results: dict[str, object] = {}

    def run(name: str, work: Callable[[Tx], str]) -> None:
        try:
            results[name] = writer.submit(work)
        except Exception as exc:
            results[name] = type(exc).__name__

    threads = [threading.Thread(target=run, args=a) for a in (("good", good), ("bad", bad))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert results == {"good": "ok", "bad": "ValueError"}
    assert ran == ["good"]
    with pytest.raises(BatchAborted):
        writer.submit(good)


# --- over real MLLP sockets ------------------------------------------------------------------

async def _exchange_all(port: int, messages: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for message in messages:
            writer.write(SB + message + EB)
            await writer.drain()
            frame = await asyncio.wait_for(reader.readuntil(EB), 60)
            answers.append(frame[1:-2])
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


def test_eight_connections_over_mllp_store_every_message_exactly_once(
        registry: Registry) -> None:
    """8 MLLP connections × 12 messages (a quarter of them retransmitted on another
    connection) through the real server and pipeline: each message is stored exactly once,
    and AA is answered only for messages that are stored."""
    per_connection, connections = 12, 8
    unique = [vxu(f"W{c}-{i}", mr=f"MR{c}x{i}", family=f"Fam{'abcdefgh'[c]}{'abcdefghijkl'[i]}",
                  doses=[Dose(key=f"K{c}x{i}")]).encode()
              for c in range(connections) for i in range(per_connection)]
    shares = [unique[c * per_connection:(c + 1) * per_connection] for c in range(connections)]
    for c in range(connections):  # retransmit some of the next connection's messages
        shares[c] += shares[(c + 1) % connections][:3]
    frontend = AsyncPipeline(registry.pipeline, threads=registry.bundle.executor_threads)

    async def scenario() -> list[list[bytes]]:
        server = MllpServer(ServerConfig(host="127.0.0.1", port=0), frontend,
                            registry.pipeline.metrics)
        await server.start()
        try:
            return list(await asyncio.gather(*(_exchange_all(server.port, share)
                                               for share in shares)))
        finally:
            await server.shutdown()

    try:
        answers = asyncio.run(scenario())
    finally:
        frontend.close()
    by_control_id: dict[str, set[bytes]] = {}
    for share, replies in zip(shares, answers, strict=True):
        assert len(replies) == len(share)
        for message, reply in zip(share, replies, strict=True):
            control_id = message.split(b"|")[9].decode()
            by_control_id.setdefault(control_id, set()).add(reply)
            assert msa(reply) == ("AA", [])
    assert len(by_control_id) == len(unique)
    assert all(len(replies) == 1 for replies in by_control_id.values())
    counts = registry.counts()
    assert (counts["patient"], counts["immunization_event"], counts["message_log"]) == (
        len(unique), len(unique), len(unique))
    for control_id in by_control_id:  # every AA'd message is in the log with its answer
        [row] = registry.repo.message_log("EHR|ORG-A", control_id)
        assert row["ack_code"] == "AA" and row["patient_id"] is not None


# --- the statement budget ------------------------------------------------------------------

@contextlib.contextmanager
def statements(registry: Registry) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        seen.append(sql.split(None, 2)[0].upper() + " " + sql.split(None, 3)[1])

    event.listen(registry.repo.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(registry.repo.engine, "before_cursor_execute", record)


# Per message, a new patient with two doses (BEGIN/COMMIT are shared by the batch). On
# PostgreSQL: the log lookup (+ match-key lock + id allocation), the candidate and key
# queries (sent together), the patient, the events with their keys and OBX, the log row.
# On SQLite: one query (log lookup, candidates, keys, last ids), then one INSERT per table
# written (patient, identifiers, names, addresses, phones, codes, NK1, PD1, both events,
# their keys, the log row).
BUDGET = {"sqlite": 12, "postgresql": 6}


def test_new_patient_vxu_runs_a_handful_of_statements(registry: Registry) -> None:
    """Intake stays within its statement budget and needs no savepoint when nothing fails."""
    registry.send(vxu("S0", mr="WARM", family="Warm"))  # the organization is cached now
    with statements(registry) as seen:
        answer = registry.send(vxu("S1", doses=[Dose(key="K1"), Dose(key="K2", cvx="03")]))
    assert msa(answer) == ("AA", [])
    work = [s for s in seen if not s.startswith(("BEGIN", "COMMIT"))]
    assert len(work) <= BUDGET[registry.repo.dialect], work
    assert not any("SAVEPOINT" in s for s in seen)
