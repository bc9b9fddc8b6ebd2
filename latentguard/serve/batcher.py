"""The micro-batcher: prompts of concurrent requests are collected for up to ``max_wait`` seconds or
``max_batch_size`` prompts and scored together in one call on the one model thread.

The event loop only queues, waits and hands out results; the scoring call runs in an executor
(a single thread), so the loop never blocks on the model. A request's prompts always travel in
one batch (a request larger than ``max_batch_size`` is a batch of its own), so every request is
answered by one guard state. Sizes count a job's ``cost`` (the texts it makes the encoder read),
not its prompts, so a prompt of many sentences takes its share of a batch and of the queue.

A scoring error is never answered as a judgement: the batch's jobs are then scored one by one, so
a fault that one request carries fails that request alone, and a fault of the guard fails them all.
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
    cost: int = 0  # texts the encoder reads for it (0: one per prompt)
    explain: bool = False
    request_id: str = ""
    endpoint: str = ""
    forms: list | None = None  # each prompt's forms as the guard of ``generation`` split them (None: split later)
    generation: int = 0
    refuse_each: bool = False  # a prompt the guard cannot read gets a refused verdict, not the job's error
    audit: bool = True  # recorded with its batch (False: its endpoint records it later, with what it adds)
    unreadable: dict = field(default_factory=dict)  # prompt index -> UnreadableTextError, found when split
    indices: list | None = None  # per prompt, the result it answers (/v1/moderations parts: their input's); None: own
    arrived: float = 0.0
    future: asyncio.Future | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.cost = max(self.cost, len(self.prompts))


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
        """Cost (texts to encode) queued and not yet in a batch."""
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
        if self._queued + job.cost > self.queue_size:
            raise QueueFull(f"the queue holds {self._queued} texts and this request adds {job.cost} "
                            f"(serve.queue_size {self.queue_size})")
        loop = asyncio.get_running_loop()
        job.future = loop.create_future()
        job.arrived = loop.time()
        self._jobs.append(job)
        self._queued += job.cost
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
        """Whole jobs, oldest first, up to ``max_batch_size`` texts (at least one job)."""
        batch, size = [], 0
        while self._jobs and (not batch or size + self._jobs[0].cost <= self.max_batch_size):
            job = self._jobs.popleft()
            batch.append(job)
            size += job.cost
        self._queued -= size
        self.on_depth(self._queued)
        return batch

    async def _dispatch(self, batch: list[Job]) -> None:
        try:
            results = await self._score(batch)
        except Exception as exc:
            if len(batch) == 1:
                return self._fail(batch[0], exc)
            for job in batch:  # alone, so a fault one request carries fails it and not its neighbours
                try:
                    (result,) = await self._score([job])
                except Exception as alone:
                    self._fail(job, alone)
                else:
                    self._answer(job, result)
            return
        for job, result in zip(batch, results):
            self._answer(job, result)

    async def _score(self, jobs: list[Job]) -> Sequence[Any]:
        results = await asyncio.get_running_loop().run_in_executor(self.executor, self.score, jobs)
        if len(results) != len(jobs):
            raise RuntimeError(f"scoring gave {len(results)} results for {len(jobs)} requests")
        return results

    @staticmethod
    def _answer(job: Job, result: Any) -> None:
        if not job.future.done():  # a caller that went away cancelled its future
            job.future.set_result(result)

    @staticmethod
    def _fail(job: Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)
            job.future.exception()  # retrieved here too: a caller that went away leaves no warning
