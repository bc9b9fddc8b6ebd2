"""The micro-batcher: prompts of concurrent requests are collected for up to ``max_wait`` seconds or
``max_batch_size`` prompts and scored together in one call on the one model thread.

The event loop only queues, waits and hands out results; the scoring call runs in an executor
(a single thread), so the loop never blocks on the model. A request's prompts always travel in
one batch (a request larger than ``max_batch_size`` is a batch of its own), so every request is
answered by one guard state. A scoring error fails every request of its batch: none of them is
answered as if it had been judged.
"""
from __future__ import annotations

import asyncio
import collections
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    """The queue holds ``queue_size`` prompts already: the caller should retry later (503)."""


class Closed(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class Job:
    """One request's prompts, waiting for their batch."""

    prompts: list[str]
    explain: bool = False
    request_id: str = ""
    endpoint: str = ""
    arrived: float = 0.0
    future: asyncio.Future | None = field(default=None, repr=False)


class MicroBatcher:
    """Queue jobs (:meth:`submit`) and score them in batches (:meth:`run`, one task on the event loop).

    ``score(jobs)`` runs on ``executor`` and returns one result per job, in order; ``on_depth(n)`` is
    told the number of queued prompts whenever it changes.
    """

    def __init__(self, score: Callable[[list[Job]], Sequence[Any]], executor: Executor, *, max_batch_size: int,
                 max_wait_s: float, queue_size: int, on_depth: Callable[[int], None] | None = None) -> None:
        self.score = score
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.on_depth = on_depth or (lambda n: None)
        self._jobs: collections.deque[Job] = collections.deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Prompts queued and not yet in a batch."""
        return self._queued

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="latentguard-batcher")

    def submit(self, job: Job) -> asyncio.Future:
        """Queue ``job``; its future gets the job's result, or the batch's exception."""
        if self._closing or not self.running:
            raise Closed("the server is shutting down")
        if self._queued + len(job.prompts) > self.queue_size:
            raise QueueFull(f"the queue holds {self._queued} prompts (serve.queue_size {self.queue_size})")
        loop = asyncio.get_running_loop()
        job.future = loop.create_future()
        job.arrived = loop.time()
        self._jobs.append(job)
        self._queued += len(job.prompts)
        self.on_depth(self._queued)
        self._wake.set()
        return job.future

    async def close(self) -> None:
        """Take no new jobs, score every queued one, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    # ----------------------------------------------------------------------------- the loop
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._jobs[0].arrived + self.max_wait_s
            while self._queued < self.max_batch_size and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            await self._dispatch(self._take())

    def _take(self) -> list[Job]:
        """Whole jobs, oldest first, up to ``max_batch_size`` prompts (at least one job)."""
        batch, size = [], 0
        while self._jobs and (not batch or size + len(self._jobs[0].prompts) <= self.max_batch_size):
            job = self._jobs.popleft()
            batch.append(job)
            size += len(job.prompts)
        self._queued -= size
        self.on_depth(self._queued)
        return batch

    async def _dispatch(self, batch: list[Job]) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.score, batch)
            if len(results) != len(batch):
                raise RuntimeError(f"scoring gave {len(results)} results for {len(batch)} requests")
        except Exception as exc:  # every request of the batch fails; none is answered as judged
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
                    job.future.exception()  # retrieved here too: a caller that went away leaves no warning
            return
        for job, result in zip(batch, results):
            if not job.future.done():  # a caller that went away cancelled its future
                job.future.set_result(result)
