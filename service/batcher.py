"""The continuous batcher: one per model function, many concurrent callers, one ONNX run at a time.

A caller awaits `submit(inputs)` with k rows (every array batched on axis 0). One worker task per
batcher takes what is queued up to `max_batch` rows, joins it into one batch, runs ONE `run_batch`
call in a thread (onnxruntime releases the GIL, so the event loop keeps serving) and hands each
caller its own rows back. As soon as a run ends the worker takes what queued meanwhile, so a caller
waits behind at most one run it is not part of. Sampler loops that await one step at a time
therefore share runs across requests: step-level continuous batching.

Order: a submission carries its request's `Ticket` (a context variable the application core sets
on admission): interactive rows go before batch rows, and within a priority the queue is taken by
request age (oldest request first, so a request's steps are not overtaken by newer ones), by least
remaining work, or by submission time (`order`). Batch rows only fill a run up to `batch_fill`
times the cost of its interactive rows (at least one row's cost), by the batcher's own online cost
model (`RunCost`): on a CPU, where a run costs in proportion to its rows, that is a few rows; on an
accelerator, whose runs cost about the same at any size, it is the whole batch. Batch submissions
are queued in pieces of that size, so an interactive row never waits behind a wide batch-only run.

Lifecycle: the worker task starts lazily on the first `submit` in the running event loop (so the
batcher can be built in a synchronous constructor) and is restarted by the next `submit` if it
ever dies; `stop()` ends it for good. A batcher belongs to one event loop: every transport that
should share its runs (HTTP, gRPC) must submit from that loop.

    .venv/bin/python -m pytest tests/test_batcher.py -q
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service import metrics

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]

# Loop turns the worker yields after a run so answered callers can resubmit (see
# `_let_answered_callers_resubmit`); a turn with nothing else ready costs microseconds.
_RESUBMIT_TURNS = 4


INTERACTIVE, BATCH = 0, 1  # priorities: lower runs first
QueueOrder = Literal["age", "remaining", "arrival"]


@dataclass(eq=False)
class Ticket:
    """An admitted request as the batchers see it: its priority, when it arrived, and the rows it still
    has to run per model function (a plan from the pipeline, counted down as its runs finish)."""

    priority: int = INTERACTIVE
    arrival: float = field(default_factory=time.perf_counter)
    remaining_rows: dict[str, int] = field(default_factory=dict)  # function -> rows still to run
    rows_per_run: dict[str, int] = field(default_factory=dict)  # function -> rows it submits at a time

    def ran(self, function: str, rows: int) -> None:
        if function in self.remaining_rows:
            self.remaining_rows[function] = max(0, self.remaining_rows[function] - rows)

    def remaining_runs(self, function: str) -> int:
        """Runs it still needs of `function`: a sampler's steps cannot share a run with each other."""
        rows = self.remaining_rows.get(function, 0)
        return math.ceil(rows / max(1, self.rows_per_run.get(function, rows or 1)))


# The ticket of the request the current task serves; rows submitted without one (warm-up, tests) are
# interactive, as old as their submission.
TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("atelier_ticket", default=None)


class RunCost:
    """Seconds per run as `fixed + per_row * rows`, fitted online by exponentially weighted least squares
    over the batcher's own runs (each weight decays by `decay` per run: a memory of ~1/(1-decay) runs).
    A small ridge pulls `fixed` toward 0, so runs of one size only (no slope to see) give the cost per
    row at that size, which is the conservative reading."""

    def __init__(self, decay: float = 0.995, ridge: float = 1e-3):
        self.decay, self.ridge = decay, ridge
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.fixed, self.per_row = 0.0, 0.0

    def observe(self, rows: int, seconds: float) -> None:
        d = self.decay
        self._w, self._x, self._y = d * self._w + 1.0, d * self._x + rows, d * self._y + seconds
        self._xx, self._xy = d * self._xx + rows * rows, d * self._xy + rows * seconds
        self.fixed, self.per_row = self._fit()

    def _fit(self) -> tuple[float, float]:
        # normal equations of  min Σ w (y - a - b x)² + λ a²,  λ = ridge · Σ w
        a11, a12, a22 = self._w * (1.0 + self.ridge), self._x, self._xx
        determinant = a11 * a22 - a12 * a12
        if determinant <= 0.0:
            return 0.0, self._y / max(self._x, 1e-12)
        fixed = (a22 * self._y - a12 * self._xy) / determinant
        per_row = (a11 * self._xy - a12 * self._y) / determinant
        if per_row < 0.0:
            return self._y / self._w, 0.0
        if fixed < 0.0:
            return 0.0, self._xy / self._xx
        return fixed, per_row

    def seconds(self, rows: int, runs: int = 1) -> float:
        return runs * self.fixed + rows * self.per_row


@dataclass(eq=False)  # identity equality: the queue holds each chunk once, and arrays do not compare
class _Chunk:
    """At most `max_batch` rows of one submission, queued as a unit and answered by one future."""

    inputs: Tensors
    rows: int
    future: asyncio.Future[Tensors]
    submitted_at: float  # time.perf_counter()
    ticket: Ticket | None
    sequence: int  # submission order, the last tie-breaker
    queued: bool = True  # False once a run took it: a cancellation can then only drop its result

    @property
    def priority(self) -> int:
        return self.ticket.priority if self.ticket is not None else INTERACTIVE


class BatcherStopped(RuntimeError):
    """The batcher cannot answer: `submit` after `stop()`, or its worker died during the run."""


class ContinuousBatcher:
    """Batches concurrent submissions to one model function into shared `run_batch` calls.

    Inputs of one name are joined on axis 0. Where they differ on axis 1 (token ids of different
    lengths), shorter ones are right-padded with zeros to the longest, which is the tokenizer's
    pad id and a zero attention mask; outputs come back as `run_batch` made them, so an output
    with a token axis has the batch's padded length. A submission larger than `max_batch` is run
    in chunks of `max_batch` rows, re-joined in order. All submissions must use the same input
    names and dtypes (those of the ONNX graph).
    """

    def __init__(
        self,
        function: str,
        run_batch: Callable[[Tensors], Tensors],
        *,
        max_batch: int,
        gather_ms: float = 0.0,
        order: QueueOrder = "age",
        batch_fill: float = 1.5,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if gather_ms < 0:
            raise ValueError(f"gather_ms must be >= 0, got {gather_ms}")
        self.function = function
        self.max_batch = max_batch
        self.gather_ms = gather_ms
        self.order = order
        self.batch_fill = batch_fill
        self.cost = RunCost()
        self._sequence = itertools.count()
        self._run_batch = run_batch
        # One thread per batcher by default: runs of one function never overlap (one ORT session
        # already uses every core), while different functions (denoise, decode) may.
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{function}"
        )
        self._queue: list[_Chunk] = []
        self._queued_rows = 0
        self._arrival = asyncio.Event()
        self._in_flight: list[_Chunk] = []
        self._worker: asyncio.Task[None] | None = None
        self._stopped = False
        # Plain counters for tests and /v1/models; Prometheus has the distributions.
        self.runs = 0  # run_batch calls that returned
        self.rows = 0  # rows those runs computed
        self.rows_cancelled = 0  # rows withdrawn from the queue before any run took them
        self._batch_rows = metrics.BATCH_ROWS.labels(function=function)
        self._batch_seconds = metrics.BATCH_SECONDS.labels(function=function)
        self._queue_depth = metrics.QUEUE_DEPTH.labels(function=function)
        self._queue_wait = metrics.QUEUE_WAIT_SECONDS.labels(function=function)
        self._rows_cancelled = metrics.ROWS_CANCELLED.labels(function=function)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(self, inputs: Tensors) -> Tensors:
        """Queue k rows and return the k output rows computed for them, in order."""
        if self._stopped:
            raise BatcherStopped(f"batcher {self.function!r} is stopped")
        rows = _row_count(inputs)
        self._ensure_worker()
        chunks = self._enqueue(inputs, rows)
        try:
            if len(chunks) == 1:
                # Awaiting the future itself, not a gather, keeps the caller one loop turn from
                # its result, so it resubmits before the worker takes the next batch.
                return await chunks[0].future
            parts = await asyncio.gather(*(chunk.future for chunk in chunks))
        except BaseException:
            # Cancelled (client gone) or a chunk failed: its remaining rows must not cost a run.
            self._withdraw(chunks)
            raise
        return {name: _join_rows([part[name] for part in parts]) for name in parts[0]}

    async def stop(self) -> None:
        """End the worker, cancel whatever still waits, and release the executor if it is ours.

        Call it after the service drained its requests; later submits raise `BatcherStopped`.
        """
        self._stopped = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for chunk in [*self._in_flight, *self._queue]:
            chunk.queued = False
            chunk.future.cancel()
        self._queue.clear()
        self._queued_rows = 0
        self._queue_depth.set(0)
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._serve(), name=f"batcher-{self.function}"
            )
            self._worker.add_done_callback(self._log_worker_exit)

    def _log_worker_exit(self, worker: asyncio.Task[None]) -> None:
        if not worker.cancelled() and worker.exception() is not None:
            logger.error(
                "batcher %s: worker died; the next submit restarts it",
                self.function,
                exc_info=worker.exception(),
            )
            # Its in-flight callers would otherwise wait for a run that will never end.
            _fail(self._in_flight, BatcherStopped(f"batcher {self.function!r} worker died"))

    def _enqueue(self, inputs: Tensors, rows: int) -> list[_Chunk]:
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        ticket = TICKET.get()
        # batch rows come in pieces no larger than a batch-only run may be, so that a run never holds more
        # of them than the fill limit allows (on a CPU a few rows; on an accelerator the whole batch)
        size = self.max_batch if ticket is None or ticket.priority == INTERACTIVE else self._batch_fill_limit(0)
        chunks = [
            _Chunk(
                inputs={name: array[start : start + size] for name, array in inputs.items()},
                rows=min(size, rows - start),
                future=loop.create_future(),
                submitted_at=now,
                ticket=ticket,
                sequence=next(self._sequence),
            )
            for start in range(0, rows, size)
        ]
        self._queue.extend(chunks)
        self._queued_rows += rows
        self._queue_depth.set(self._queued_rows)
        self._arrival.set()
        return chunks

    def _withdraw(self, chunks: list[_Chunk]) -> None:
        for chunk in chunks:
            if chunk.queued:
                chunk.queued = False
                self._queue.remove(chunk)
                self._queued_rows -= chunk.rows
                self._count_cancelled(chunk.rows)
            chunk.future.cancel()  # a chunk in a run then has its result dropped on delivery
        self._queue_depth.set(self._queued_rows)

    def _count_cancelled(self, rows: int) -> None:
        self.rows_cancelled += rows
        self._rows_cancelled.inc(rows)

    async def _serve(self) -> None:
        """The worker: take a batch, run it, deliver, repeat, for as long as the batcher lives."""
        loop = asyncio.get_running_loop()
        while True:
            chunks = await self._next_batch(loop)
            self._in_flight = chunks
            try:
                await self._run(loop, chunks)
            except Exception as error:  # a failed run fails its callers, never the worker
                logger.warning("batcher %s: run of %d chunks failed: %r", self.function, len(chunks), error)
                _fail(chunks, error)
            self._in_flight = []
            await self._let_answered_callers_resubmit(sum(chunk.rows for chunk in chunks))

    async def _let_answered_callers_resubmit(self, answered_rows: int) -> None:
        """Give the callers just answered (sampler loops) a few loop turns to queue their next step.

        Taking the queue at once would start a run of only the rows that arrived during the last
        one, while the answered callers resubmit behind it: two cohorts then alternate runs forever
        (10 runs instead of 6 in test_answered_callers_rejoin_the_next_run_instead_of_alternating).
        A caller awaiting `submit` directly is back after one turn, through one `asyncio.gather`
        after three; stop early once they all are.
        """
        already_queued = self._queued_rows
        for _ in range(_RESUBMIT_TURNS):
            came_back = self._queued_rows - already_queued
            if came_back >= answered_rows or self._queued_rows >= self.max_batch:
                return
            await asyncio.sleep(0)

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Chunk]:
        while True:
            while not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
            if self.gather_ms > 0 and self._queued_rows < self.max_batch:
                await self._gather_window(loop)
            chunks = self._take()
            if chunks:  # empty only if every caller withdrew during the gather window
                return chunks

    async def _gather_window(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to gather_ms for more rows, returning early once a full batch is queued."""
        deadline = loop.time() + self.gather_ms / 1000
        while self._queued_rows < self.max_batch and (remaining := deadline - loop.time()) > 0:
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Chunk]:
        """Take queued chunks in priority-then-`order` order: interactive ones up to max_batch, then batch
        ones up to the fill limit. Within a priority, stopping at the first chunk that does not fit keeps
        the order fair (no small late chunk jumps a large early one)."""
        self._queue.sort(key=self._order_key)
        chunks: list[_Chunk] = []
        rows, limit, filling, taken = 0, self.max_batch, False, 0
        now = time.perf_counter()
        for chunk in self._queue:  # a prefix of the sorted queue is taken
            if chunk.priority != INTERACTIVE and not filling:
                filling, limit = True, self._batch_fill_limit(rows)
            if chunks and rows + chunk.rows > limit:  # the first chunk always runs (it is at most max_batch)
                break
            taken += 1
            chunk.queued = False
            self._queued_rows -= chunk.rows
            if chunk.future.done():  # cancelled, and its caller has not yet run to withdraw it
                self._count_cancelled(chunk.rows)
                continue
            rows += chunk.rows
            self._queue_wait.observe(now - chunk.submitted_at)
            chunks.append(chunk)
        del self._queue[:taken]
        self._queue_depth.set(self._queued_rows)
        return chunks

    def _order_key(self, chunk: _Chunk) -> tuple:
        ticket = chunk.ticket
        if self.order == "arrival" or ticket is None:
            return chunk.priority, chunk.submitted_at, chunk.sequence
        if self.order == "remaining":
            return chunk.priority, ticket.remaining_rows.get(self.function, 0), ticket.arrival, chunk.sequence
        return chunk.priority, ticket.arrival, chunk.sequence

    def _batch_fill_limit(self, interactive_rows: int) -> int:
        """Rows a run may hold once batch rows join it: its cost stays within `batch_fill` times the cost of
        its interactive rows (of one row, when there are none, which bounds what a batch-only run makes a
        newly arrived interactive request wait)."""
        budget = self.batch_fill * self.cost.seconds(max(1, interactive_rows))
        if self.cost.per_row <= 0.0:
            return self.max_batch
        return max(1, interactive_rows, min(self.max_batch, int((budget - self.cost.fixed) / self.cost.per_row)))

    async def _run(self, loop: asyncio.AbstractEventLoop, chunks: list[_Chunk]) -> None:
        """Join the chunks, run them as one batch in the executor, split the outputs back."""
        batch = {name: _join_rows([chunk.inputs[name] for chunk in chunks]) for name in chunks[0].inputs}
        outputs, seconds = await loop.run_in_executor(self._executor, _timed, self._run_batch, batch)
        rows = sum(chunk.rows for chunk in chunks)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != rows:
                raise ValueError(
                    f"{self.function}: output {name!r} has shape {array.shape} for a batch of {rows} rows"
                )
        self.runs += 1
        self.rows += rows
        self.cost.observe(rows, seconds)
        self._batch_rows.observe(rows)
        self._batch_seconds.observe(seconds)
        for chunk in chunks:
            if chunk.ticket is not None:
                chunk.ticket.ran(self.function, chunk.rows)
        offsets = np.cumsum([chunk.rows for chunk in chunks])[:-1]
        split = {name: np.split(array, offsets) for name, array in outputs.items()}
        for index, chunk in enumerate(chunks):
            if not chunk.future.done():  # done = cancelled in flight: the rows are simply dropped
                chunk.future.set_result({name: parts[index] for name, parts in split.items()})


def _timed(run_batch: Callable[[Tensors], Tensors], batch: Tensors) -> tuple[Tensors, float]:
    """Runs in the executor thread, so the seconds are the model's, not the event loop's."""
    started = time.perf_counter()
    outputs = run_batch(batch)
    return outputs, time.perf_counter() - started


def _fail(chunks: list[_Chunk], error: BaseException) -> None:
    for chunk in chunks:
        if not chunk.future.done():
            chunk.future.set_exception(error)


def _row_count(inputs: Tensors) -> int:
    """The k shared by every array on axis 0; a malformed submission fails alone, here."""
    if not inputs:
        raise ValueError("a submission needs at least one input array")
    counts = {name: (array.shape[0] if array.ndim else 0) for name, array in inputs.items()}
    rows = next(iter(counts.values()))
    if rows == 0 or any(count != rows for count in counts.values()):
        raise ValueError(f"every input needs the same number (>= 1) of rows on axis 0, got {counts}")
    return rows


def _join_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate on axis 0, right-padding axis 1 with zeros where lengths differ (token ids)."""
    if len(arrays) == 1:
        return arrays[0]
    if len({array.shape[1:] for array in arrays}) > 1 and all(array.ndim >= 2 for array in arrays):
        longest = max(array.shape[1] for array in arrays)
        arrays = [
            np.pad(array, [(0, 0), (0, longest - array.shape[1])] + [(0, 0)] * (array.ndim - 2))
            for array in arrays
        ]
    return np.concatenate(arrays, axis=0)


class CohortGate:
    """Request-level batching for diffusion, kept for the benchmark's comparison: requests that
    arrive while a cohort runs wait, and start together as the next cohort once every member of
    the running one has finished, so a cohort's sampling loops share runs only with each other
    (static batching: early finishers leave idle slots until the slowest member is done)."""

    def __init__(self) -> None:
        self._running = 0
        self._waiting: list[asyncio.Future[None]] = []

    async def enter(self) -> None:
        if self._running == 0 and not self._waiting:
            self._running = 1
            return
        admitted = asyncio.get_running_loop().create_future()
        self._waiting.append(admitted)
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.cancelled():
                if admitted in self._waiting:
                    self._waiting.remove(admitted)
            else:
                self.leave()  # admitted just as the caller went away: give the slot back
            raise

    def leave(self) -> None:
        self._running -= 1
        if self._running == 0 and self._waiting:
            cohort = [admitted for admitted in self._waiting if not admitted.cancelled()]
            self._waiting = []
            self._running = len(cohort)
            for admitted in cohort:
                admitted.set_result(None)
