"""The continuous batcher: one per model function, many concurrent callers, one ONNX run at a time.

A caller awaits `submit(inputs)` with k rows (every array batched on axis 0). One worker task per
batcher takes everything queued, FIFO, up to `max_batch` rows, joins it into one batch, runs ONE
`run_batch` call in a thread (onnxruntime releases the GIL, so the event loop keeps serving) and
hands each caller its own rows back. As soon as a run ends the worker takes what queued meanwhile,
so a caller waits behind at most one run it is not part of. Sampler loops that await one step at a
time therefore share runs across requests: step-level continuous batching.

Lifecycle: the worker task starts lazily on the first `submit` in the running event loop (so the
batcher can be built in a synchronous constructor) and is restarted by the next `submit` if it
ever dies; `stop()` ends it for good. A batcher belongs to one event loop: every transport that
should share its runs (HTTP, gRPC) must submit from that loop.

    .venv/bin/python -m pytest tests/test_batcher.py -q
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service import metrics

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]

# Loop turns the worker yields after a run so answered callers can resubmit (see
# `_let_answered_callers_resubmit`); a turn with nothing else ready costs microseconds.
_RESUBMIT_TURNS = 4


@dataclass(eq=False)  # identity equality: the queue holds each chunk once, and arrays do not compare
class _Chunk:
    """At most `max_batch` rows of one submission, queued as a unit and answered by one future."""

    inputs: Tensors
    rows: int
    future: asyncio.Future[Tensors]
    submitted_at: float  # time.perf_counter()
    queued: bool = True  # False once a run took it: a cancellation can then only drop its result


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
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if gather_ms < 0:
            raise ValueError(f"gather_ms must be >= 0, got {gather_ms}")
        self.function = function
        self.max_batch = max_batch
        self.gather_ms = gather_ms
        self._run_batch = run_batch
        # One thread per batcher by default: runs of one function never overlap (one ORT session
        # already uses every core), while different functions (denoise, decode) may.
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{function}"
        )
        self._queue: deque[_Chunk] = deque()
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
        chunks = [
            _Chunk(
                inputs={name: array[start : start + self.max_batch] for name, array in inputs.items()},
                rows=min(self.max_batch, rows - start),
                future=loop.create_future(),
                submitted_at=now,
            )
            for start in range(0, rows, self.max_batch)
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
        """Pop queued chunks FIFO up to max_batch rows; stopping at the first that does not fit
        keeps the order fair (no small late chunk jumps a large early one)."""
        chunks: list[_Chunk] = []
        rows = 0
        now = time.perf_counter()
        while self._queue and rows + self._queue[0].rows <= self.max_batch:
            chunk = self._queue.popleft()
            chunk.queued = False
            self._queued_rows -= chunk.rows
            if chunk.future.done():  # cancelled, and its caller has not yet run to withdraw it
                self._count_cancelled(chunk.rows)
                continue
            rows += chunk.rows
            self._queue_wait.observe(now - chunk.submitted_at)
            chunks.append(chunk)
        self._queue_depth.set(self._queued_rows)
        return chunks

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
        self._batch_rows.observe(rows)
        self._batch_seconds.observe(seconds)
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
