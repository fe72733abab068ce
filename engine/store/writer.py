"""Group commit: one writer thread runs waiting messages' transactions and commits them once.

Why: a durable commit costs an fsync (SQLite WAL with synchronous=FULL, PostgreSQL with
synchronous_commit=on). One commit per message caps intake at the disk's fsync rate and, on
SQLite, serialises every writer on the database lock. Here callers (pipeline threads)
`submit` a unit of work and block; the writer takes whatever is waiting (up to `max_batch`,
optionally lingering `linger_s` for more), and runs:

    BEGIN                      (SQLite: BEGIN IMMEDIATE, see engine.store.db)
      SAVEPOINT iz_msg ; work(message 1) ; RELEASE SAVEPOINT iz_msg
      SAVEPOINT iz_msg ; work(message 2) ; RELEASE SAVEPOINT iz_msg
      ...
    COMMIT

and only after COMMIT returns hands each caller its result. So:

* each message is still all-or-nothing: a unit of work that raises is rolled back to its own
  savepoint (the rest of the batch carries on) and its caller gets the exception;
* an IntegrityError or a deadlock/serialization failure (a concurrent engine claimed the same
  key) rolls back that message's savepoint and runs it again, up to `max_attempts` times —
  the re-run sees what the other transaction committed;
* when the batch cannot continue (a savepoint cannot be rolled back: the connection is gone)
  or COMMIT fails, nothing of the batch is stored and *every* caller gets `BatchAborted`,
  which the handlers answer AR 207 ("retry"); no result is ever released before COMMIT, so
  nothing is acknowledged that was not stored;
* callbacks registered with `Tx.after_commit` (e.g. caching a new organization's id) run only
  for messages whose savepoint was released and whose batch committed.

Invariants across processes still live in the database (unique constraints, row and advisory
locks): a batch is an ordinary transaction. PostgreSQL batches are capped below 64 messages
because each released savepoint that wrote rows is a subtransaction, and more than 64 per
transaction overflow the backend's subtransaction cache and slow every other snapshot.
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
                 max_attempts: int = 4, on_batch: Callable[[int], None] | None = None,
                 name: str = "iz-store-writer") -> None:
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.linger_s = linger_s
        self.max_attempts = max(1, max_attempts)
        self.on_batch = on_batch
        self._queue: collections.deque[_Job[Any]] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

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
            self._cv.notify()
        self._thread.join()

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
        while (batch := self._take()) is not None:
            try:
                self._run_batch(batch)
            except BaseException as exc:  # never leave a caller waiting, whatever happened
                for job in batch:
                    if not job.done.is_set():
                        job.error = BatchAborted(f"store batch failed ({type(exc).__name__})")
                        job.done.set()
                log.error("store.writer_failed", error=type(exc).__name__)

    def _run_batch(self, batch: list[_Job[Any]]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            conn = self.engine.connect()
        except SQLAlchemyError as exc:
            self._abort(batch, exc)
            return
        try:
            try:
                trans = conn.begin()
                for job in batch:
                    self._run_job(conn, job)
                trans.commit()
            except (SQLAlchemyError, _BatchBroken) as exc:
                self._rollback(conn)
                self._abort(batch, exc)
                return
            for job in batch:
                for callback in job.callbacks:
                    callback()
                job.done.set()
        finally:
            conn.close()

    def _run_job(self, conn: Connection, job: _Job[Any]) -> None:
        last: BaseException | None = None
        for attempt in range(self.max_attempts):
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
