"""Concurrent requests decoded together: a bounded request queue in front of a continuous batch.

Requests wait in a queue; one worker thread drives a :class:`~trainlab.serve.stepper.Stepper` (continuous
batching, as vLLM's and TGI's schedulers do since Orca's iteration-level scheduling): before every decode
step it admits the oldest waiting requests whose rows fit (``max_batch`` rows in all; a request with ``n``
choices takes ``n``; one request is admitted even if it alone has more), prefills them and lets them join
the running batch; after the step, a request whose rows are done leaves and its slots go to the next
waiting request. Requests of any sampling settings share a batch: each samples with its own generator, so
a seeded request draws what it draws alone.

At most ``max_queue`` requests are admitted (waiting or decoding); one more is refused with
:class:`QueueFull` (HTTP 503), so a flood of clients gets quick refusals instead of unbounded
waits. A request whose client went away (``Job.cancelled``) is dropped if it has not started, and
its rows finish at the next token if it has, freeing its slots for the next step. A decode that
raises fails the requests in the running batch (the server goes on with the next ones).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainlab.serve.engine import Engine, Job
from trainlab.serve.stepper import Stepper

#: ``done(error)``: called on the batcher's thread when a job has its choices (error None) or failed.
DoneHook = Callable[[BaseException | None], None]


class QueueFull(Exception):
    """The server holds ``max_queue`` requests already."""


@dataclass
class BatchStats:
    """What the batcher did: prefills (``batches``: groups of requests that joined together), decode steps,
    the requests and rows decoded, the most rows decoding at once (``largest``) and the requests that joined
    a batch already running (``joined``)."""

    batches: int = 0
    steps: int = 0
    jobs: int = 0
    rows: int = 0
    largest: int = 0
    joined: int = 0


class Batcher:
    """Admit jobs (bounded), decode them as one continuous batch on one worker thread."""

    def __init__(self, engine: Engine, *, max_batch: int = 8, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}")
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.stats = BatchStats()
        self._pending: deque[tuple[Job, DoneHook]] = deque()
        self._running: dict[int, tuple[Job, DoneHook]] = {}
        self._admitted = 0
        self._closed = False
        self._cond = threading.Condition()
        self._stepper = Stepper(engine)
        self._thread = threading.Thread(target=self._loop, name="trainlab-batcher", daemon=True)
        self._thread.start()

    @property
    def admitted(self) -> int:
        """Requests waiting or decoding."""
        return self._admitted

    @property
    def running(self) -> int:
        """Rows decoding now."""
        return self._stepper.rows

    def jobs(self) -> list[Job]:
        """The jobs in the running batch (a snapshot)."""
        with self._cond:
            return [job for job, _ in self._running.values()]

    def submit(self, job: Job, done: DoneHook) -> None:
        """Queue ``job``; ``done`` is called when it has finished. Raises :class:`QueueFull`."""
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self._admitted >= self.max_queue:
                raise QueueFull(f"the server is busy: {self._admitted} requests are waiting or decoding "
                                f"(--max-queue {self.max_queue}); retry later")
            self._admitted += 1
            self._pending.append((job, done))
            self._cond.notify()

    def close(self) -> None:
        """Stop the worker after the step it is running; waiting and running jobs fail."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        for job, done in [*self._pending, *self._running.values()]:
            job.cancelled.set()
            done(QueueFull("the server is shutting down"))
        self._pending.clear()
        self._running.clear()

    def _take(self) -> tuple[list[tuple[Job, DoneHook]], list[tuple[Job, DoneHook]]] | None:
        """(jobs to admit now, cancelled jobs to drop); None when closing. Waits while there is nothing to do."""
        with self._cond:
            while not self._pending and not self._running and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            admit: list[tuple[Job, DoneHook]] = []
            dropped: list[tuple[Job, DoneHook]] = []
            if self._running and not self._stepper.joinable:
                return admit, dropped
            rows = self._stepper.rows
            while self._pending:
                job = self._pending[0][0]
                if job.cancelled.is_set():
                    dropped.append(self._pending.popleft())
                    continue
                if rows + job.n > self.max_batch and (rows or admit):
                    break
                admit.append(self._pending.popleft())
                rows += job.n
            return admit, dropped

    def _finish(self, done: DoneHook, error: BaseException | None) -> None:
        with self._cond:
            self._admitted -= 1
        done(error)

    def _loop(self) -> None:
        stepper = self._stepper
        while True:
            taken = self._take()
            if taken is None:
                return
            admit, dropped = taken
            for _, done in dropped:  # the client left before its turn
                self._finish(done, None)
            joining = bool(stepper.live)
            for job, done in admit:
                self._running[id(job)] = (job, done)
            finished: list[Job] = []
            try:
                with self.engine.lock, torch.no_grad():
                    if admit:
                        finished += stepper.admit([job for job, _ in admit])
                        self.stats.batches += 1
                        self.stats.jobs += len(admit)
                        self.stats.rows += sum(job.n for job, _ in admit)
                        self.stats.joined += len(admit) if joining else 0
                    self.stats.largest = max(self.stats.largest, stepper.rows)
                    if stepper.live:
                        finished += stepper.step()
                        self.stats.steps += 1
            except Exception as exc:  # one failed decode must not stop the server: its requests get the error
                stepper.clear()
                failed, self._running = list(self._running.values()), {}
                for _, done in failed:
                    self._finish(done, exc)
                continue
            for job in finished:
                _, done = self._running.pop(id(job))
                self._finish(done, None)
