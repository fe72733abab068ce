"""Group commit: one writer thread runs waiting messages' transactions and commits them once.

Why: a durable commit costs an fsync (SQLite WAL with synchronous=FULL, PostgreSQL with
synchronous_commit=on). One commit per message caps intake at the disk's fsync rate and, on
SQLite, serialises every writer on the database lock. Here callers (pipeline threads)
`submit` a unit of work and block; the writer takes whatever is waiting (up to `max_batch`,
optionally lingering `linger_s` for more), and runs it optimistically, then carefully:

    BEGIN ; work(1) ; work(2) ; ... ; COMMIT          (SQLite: BEGIN IMMEDIATE, engine.store.db)

    -- only if some work(i) raised: ROLLBACK, then, without message i (or with it, when its
    -- failure was a retryable one), each message in its own savepoint:
    BEGIN
      SAVEPOINT iz_msg ; work(1) ; RELEASE SAVEPOINT iz_msg
      SAVEPOINT iz_msg ; work(2) ; RELEASE SAVEPOINT iz_msg   (or ROLLBACK TO SAVEPOINT)
      ...
    COMMIT

and only after COMMIT returns hands each caller its result. On PostgreSQL the first pass runs in
psycopg's pipeline mode (engine.store.precompiled.pipelined): statements whose results the
work does not read are queued, and each message's queue is flushed — sent and run, raising any
failure — when its work returns, so a failure is still attributed to the message that caused
it and COMMIT follows only statements that all succeeded. Failures are rare, and a
savepoint costs two statements (on PostgreSQL two round trips, a fifth of a VXU's), so the
common batch has none. So:

* each message is still all-or-nothing: a unit of work that raises is rolled back (the whole
  first pass, or its own savepoint in the careful pass — the rest of the batch carries on)
  and its caller gets the exception;
* an IntegrityError or a deadlock/serialization failure (a concurrent engine claimed the same
  key) runs that message again, up to `max_attempts` times — the re-run sees what the other
  transaction committed;
* when the batch cannot continue (a savepoint cannot be rolled back: the connection is gone)
  or COMMIT fails, nothing of the batch is stored and *every* caller gets `BatchAborted`,
  which the handlers answer AR 207 ("retry"); no result is ever released before COMMIT, so
  nothing is acknowledged that was not stored;
* callbacks registered with `Tx.after_commit` (e.g. caching a new organization's id) run only
  for messages whose work was kept (last run succeeded) and whose batch committed. A unit of
  work may run more than once; it must keep its effects inside the transaction or behind
  `after_commit`.

Each writer thread keeps its connection between batches (a checkout with its liveness ping
costs several round trips, more than a small batch's statements); one idle for longer than
`idle_recheck_s`, or one a batch failed on, goes back to the pool and the next batch checks a
fresh one out. `writers` > 1 (PostgreSQL) runs that many writer threads on the same queue,
each with its own connection and batch, so one batch's network waits overlap another's work.
Two batches' locks can then deadlock (PostgreSQL detects it and fails one statement); that
message is re-run like any other retryable failure.

Invariants across processes still live in the database (unique constraints, row and advisory
locks): a batch is an ordinary transaction. PostgreSQL batches are capped below 64 messages
because in the careful pass each released savepoint that wrote rows is a subtransaction, and
more than 64 per transaction overflow the backend's subtransaction cache and slow every
other snapshot.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from engine.observability.logging import get_logger
from engine.store.precompiled import pipelined

log = get_logger("engine.store.writer")

T = TypeVar("T")

# SQLSTATE classes a re-run can cure: serialization failure, deadlock.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


class BatchAborted(Exception):
    """The batch this message was in did not commit (or the store is closed): nothing stored."""


@dataclass(slots=True)
class Tx:
    """What a unit of work gets: the connection (inside its savepoint) and commit hooks."""

    connection: Connection
    attempt: int = 0
    # Per-attempt notes of the unit of work itself (e.g. which locks it already holds).
    notes: dict[str, object] = field(default_factory=dict)
    _after_commit: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this message's batch has committed (never if rolled back)."""
        self._after_commit.append(callback)


@dataclass(slots=True)
class _Job(Generic[T]):
    work: Callable[[Tx], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    callbacks: list[Callable[[], None]] = field(default_factory=list)


class _BatchBroken(Exception):
    """Internal: the transaction cannot go on (a savepoint could not be rolled back)."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    if isinstance(exc, OperationalError) and not exc.connection_invalidated:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        return sqlstate in _RETRYABLE_SQLSTATES
    return False


class GroupCommitter:
    """A single writer thread that commits waiting units of work together (module docstring)."""

    def __init__(self, engine: Engine, *, max_batch: int = 32, linger_s: float = 0.0,
                 max_attempts: int = 4, writers: int = 1,
                 on_batch: Callable[[int], None] | None = None,
                 idle_recheck_s: float = 10.0, name: str = "iz-store-writer") -> None:
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.linger_s = linger_s
        self.max_attempts = max(1, max_attempts)
        self.on_batch = on_batch
        self.idle_recheck_s = idle_recheck_s
        self._queue: collections.deque[_Job[Any]] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, writers))]
        for thread in self._threads:
            thread.start()

    # --- callers ---

    def submit(self, work: Callable[[Tx], T]) -> T:
        """Run `work` in its own savepoint of the next batch; return its result once committed.

        Raises what `work` raised (its savepoint was rolled back), or BatchAborted.
        """
        job: _Job[T] = _Job(work)
        with self._cv:
            if self._closed:
                raise BatchAborted("the store writer is closed")
            self._queue.append(job)
            self._cv.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join()

    # --- the writer thread ---

    def _take(self) -> list[_Job[Any]] | None:
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait()
            if self.linger_s and len(self._queue) < self.max_batch and not self._closed:
                deadline = time.monotonic() + self.linger_s
                while len(self._queue) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            count = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _loop(self) -> None:
        conn: Connection | None = None
        last_used = 0.0
        try:
            while (batch := self._take()) is not None:
                if conn is not None and time.monotonic() - last_used > self.idle_recheck_s:
                    conn.close()  # back to the pool; the next checkout pings it
                    conn = None
                try:
                    conn = self._run_batch(batch, conn)
                except BaseException as exc:  # never leave a caller waiting, whatever happened
                    for job in batch:
                        if not job.done.is_set():
                            job.error = BatchAborted(
                                f"store batch failed ({type(exc).__name__})")
                            job.done.set()
                    log.error("store.writer_failed", error=type(exc).__name__)
                    conn = None
                last_used = time.monotonic()
        finally:
            if conn is not None:
                conn.close()

    def _run_batch(self, batch: list[_Job[Any]],
                   conn: Connection | None) -> Connection | None:
        """Run and commit one batch; returns the connection to keep (None: it failed)."""
        if self.on_batch is not None:
            self.on_batch(len(batch))
        if conn is None:
            try:
                conn = self.engine.connect()
            except SQLAlchemyError as exc:
                self._abort(batch, exc)
                return None
        pending = list(batch)
        attempts = dict.fromkeys(map(id, batch), 0)
        try:
            # Optimistic first pass: no savepoints (two statements per message saved).
            failed = self._run_plain(conn, pending, attempts)
            if failed is not None:
                culprit, error = failed
                self._rollback(conn)
                if _retryable(error) and attempts[id(culprit)] + 1 < self.max_attempts:
                    attempts[id(culprit)] += 1
                else:
                    culprit.error = error
                    pending.remove(culprit)
                # The culprit is known; everyone else runs again, each in a savepoint now.
                trans = conn.begin()
                for other in pending:
                    self._run_job(conn, other, attempts[id(other)])
                trans.commit()
        except (SQLAlchemyError, _BatchBroken) as exc:
            self._rollback(conn)
            conn.close()
            self._abort([j for j in batch if not j.done.is_set()], exc)
            return None
        for job in batch:
            if job.error is None:
                for callback in job.callbacks:
                    callback()
            job.done.set()
        return conn

    def _run_plain(self, conn: Connection, jobs: list[_Job[Any]],
                   attempts: dict[int, int]) -> tuple[_Job[Any], Exception] | None:
        """Every job in one transaction without savepoints, then COMMIT; or the first job
        that raised (the transaction is then unusable and must be rolled back)."""
        with pipelined(conn) as flush:
            trans = conn.begin()
            for job in jobs:
                tx = Tx(conn, attempts[id(job)])
                try:
                    job.result = job.work(tx)
                    # PostgreSQL: what the job queued runs now, so its failure is its own.
                    flush()
                except Exception as exc:
                    self._rollback(conn)  # inside the pipeline, which then closes cleanly
                    return job, exc
                job.callbacks = tx._after_commit
            trans.commit()
        return None

    def _run_job(self, conn: Connection, job: _Job[Any], first_attempt: int = 0) -> None:
        last: BaseException | None = None
        for attempt in range(first_attempt, self.max_attempts):
            tx = Tx(conn, attempt)
            conn.exec_driver_sql("SAVEPOINT iz_msg")
            try:
                result = job.work(tx)
            except Exception as exc:
                self._rollback_savepoint(conn)
                if _retryable(exc):
                    last = exc
                    continue
                job.error = exc
                return
            conn.exec_driver_sql("RELEASE SAVEPOINT iz_msg")
            job.result, job.callbacks = result, tx._after_commit
            return
        job.error = last

    @staticmethod
    def _rollback_savepoint(conn: Connection) -> None:
        try:
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT iz_msg")
            conn.exec_driver_sql("RELEASE SAVEPOINT iz_msg")
        except SQLAlchemyError as exc:
            raise _BatchBroken(type(exc).__name__) from exc

    @staticmethod
    def _rollback(conn: Connection) -> None:
        try:
            conn.rollback()
        except SQLAlchemyError:
            # The connection is unusable; make sure the pool does not hand it out again.
            conn.invalidate()

    @staticmethod
    def _abort(batch: list[_Job[Any]], exc: BaseException) -> None:
        reason = type(exc.__cause__ or exc).__name__ if isinstance(exc, _BatchBroken) else (
            type(exc).__name__)
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            reason += " (connection lost)"
        log.warning("store.batch_aborted", messages=len(batch), error=reason)
        for job in batch:
            job.error = BatchAborted(f"store batch did not commit ({reason})")
            job.error.__cause__ = None
            job.done.set()
