"""The shell around the pure pipeline: the MLLP server's `FrameHandler`.

The pipeline is synchronous. When its handlers block on a database, `process` runs on a
bounded thread pool so the event loop keeps reading and answering other connections; a
pipeline without blocking handlers runs inline on the loop, which is faster.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from engine.pipeline import Pipeline


class AsyncPipeline:
    """Adapts `Pipeline` to the server's FrameHandler protocol (handle / reject_oversize)."""

    def __init__(self, pipeline: Pipeline, threads: int = 0) -> None:
        self.pipeline = pipeline
        self._executor = (ThreadPoolExecutor(threads, thread_name_prefix="iz-pipeline")
                          if threads else None)

    async def handle(self, payload: bytes, peer: str) -> bytes:
        if self._executor is None:
            return self.pipeline.process(payload, peer)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.pipeline.process, payload, peer)

    def reject_oversize(self, head: bytes, size: int) -> bytes | None:
        return self.pipeline.reject_oversize(head, size)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
