"""Concurrent requests decoded together: a bounded request queue in front of :meth:`Engine.run`.

Requests that arrive while a batch decodes wait in a queue; when the model is free, the batcher
takes the oldest waiting request and every other waiting request that may share its decode
(:meth:`~trainlab.serve.engine.Job.batches_with`: all greedy, or the same temperature and top_p
without a seed), up to ``max_batch`` rows (a request with ``n`` choices takes ``n``), and decodes
them as one left-padded batch on the model's KV cache (positions from the mask, so each row
continues as it would alone). This is *dynamic* batching, as in TGI's and vLLM's schedulers
before a running batch could be joined: a request waits for the running batch to finish, and
rows that finish early idle until the longest row of their batch ends.

At most ``max_queue`` requests are admitted (waiting or decoding); one more is refused with
:class:`QueueFull` (HTTP 503), so a flood of clients gets quick refusals instead of unbounded
waits. A request whose client went away (``Job.cancelled``) is dropped if it has not started, and
its rows finish at the next token if it has.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from trainlab.serve.engine import Engine, Job

#: ``done(error)``: called on the batcher's thread when a job has its choices (error None) or failed.
DoneHook = Callable[[BaseException | None], None]


class QueueFull(Exception):
    """The server holds ``max_queue`` requests already."""


@dataclass
class BatchStats:
    """What the batcher did: batches decoded, the requests and rows in them, the largest batch."""

    batches: int = 0
    jobs: int = 0
    rows: int = 0
    largest: int = 0


class Batcher:
    """Admit jobs (bounded), decode compatible waiting jobs together on one worker thread."""

    def __init__(self, engine: Engine, *, max_batch: int = 8, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}")
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.stats = BatchStats()
        self._pending: deque[tuple[Job, DoneHook]] = deque()
        self._admitted = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="trainlab-batcher", daemon=True)
        self._thread.start()

    @property
    def admitted(self) -> int:
        """Requests waiting or decoding."""
        return self._admitted

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
        """Stop the worker after the batch it is decoding; waiting jobs fail."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        while self._pending:
            _, done = self._pending.popleft()
            done(QueueFull("the server is shutting down"))

    def _take(self) -> list[tuple[Job, DoneHook]]:
        """The oldest waiting job and the waiting jobs that batch with it, up to ``max_batch`` rows."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            head = self._pending.popleft()
            batch, rows, rest = [head], head[0].n, deque()
            while self._pending:
                item = self._pending.popleft()
                if item[0].batches_with(head[0]) and rows + item[0].n <= self.max_batch:
                    batch.append(item)
                    rows += item[0].n
                else:
                    rest.append(item)
            self._pending = rest
            return batch

    def _finish(self, done: DoneHook, error: BaseException | None) -> None:
        with self._cond:
            self._admitted -= 1
        done(error)

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            live = []
            for job, done in batch:
                if job.cancelled.is_set():  # the client left before its turn
                    self._finish(done, None)
                else:
                    live.append((job, done))
            if not live:
                continue
            error: BaseException | None = None
            try:
                self.engine.run([job for job, _ in live])
            except Exception as exc:  # one failed decode must not stop the server: its requests get the error
                error = exc
            rows = sum(job.n for job, _ in live)
            self.stats.batches += 1
            self.stats.jobs += len(live)
            self.stats.rows += rows
            self.stats.largest = max(self.stats.largest, rows)
            for _, done in live:
                self._finish(done, error)
