"""Specifications of the continuous batcher, driven by a numpy fake of an ONNX run.

No verdict here depends on timing: where a scenario needs a run to be in flight while other callers
arrive, the fake model holds that run at a gate (`FakeModel.gate`) until the test opens it, and the
test waits for the run to start (`in_flight`) instead of sleeping. Waits on threads are bounded
(`HANG_SECONDS`) only so a broken batcher fails instead of hanging.

.venv/bin/python -m pytest tests/test_batcher.py -q
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.batcher import BatcherStopped, ContinuousBatcher

HANG_SECONDS = 30.0


class FakeModel:
    """Doubles `x` (standing in for an ONNX run) and records every batch. With `gated=True` every run
    waits for `gate` to open (it stays open once opened), so a test decides when a run ends."""

    def __init__(self, gated: bool = False, fail_when: Callable[[dict], bool] | None = None, seconds: float = 0.0):
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Semaphore(0)  # released once per run that has begun
        self.seconds = seconds
        self.fail_when = fail_when
        self.batches: list[dict[str, np.ndarray]] = []
        self.threads: set[str] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append({name: array.copy() for name, array in batch.items()})
        self.threads.add(threading.current_thread().name)
        self.started.release()
        if not self.gate.wait(HANG_SECONDS):
            raise TimeoutError("the test never opened the gate")
        time.sleep(self.seconds)
        if self.fail_when is not None and self.fail_when(batch):
            raise RuntimeError("model exploded")
        return {"y": batch["x"] * 2}

    async def in_flight(self) -> None:
        """Returns once the next run has begun (and is held at the gate, if closed)."""
        assert await asyncio.to_thread(self.started.acquire, True, HANG_SECONDS), "no run started"

    @property
    def batch_sizes(self) -> list[int]:
        return [batch["x"].shape[0] for batch in self.batches]

    def saw(self, value: float) -> bool:
        return any((batch["x"] == value).any() for batch in self.batches)


def rows(value: float, k: int = 1) -> dict[str, np.ndarray]:
    """k rows of shape (4,), all equal to `value`, so a row's origin is visible in any batch."""
    return {"x": np.full((k, 4), value, dtype=np.float32)}


async def wait_for_queued(batcher: ContinuousBatcher, queued_rows: int) -> None:
    """Yield to the loop until `queued_rows` rows wait in the batcher's queue (bounded in loop turns)."""
    for _ in range(10_000):
        if batcher.queued_rows >= queued_rows:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{batcher.queued_rows} rows queued, expected {queued_rows}")


def sample(name: str, function: str) -> float:
    return REGISTRY.get_sample_value(name, {"function": function}) or 0.0


def test_concurrent_callers_share_runs():
    model = FakeModel()
    batcher = ContinuousBatcher("test.share", model, max_batch=64)

    async def scenario():
        return await asyncio.gather(*(batcher.submit(rows(float(i))) for i in range(32)))

    results = asyncio.run(scenario())
    assert batcher.runs <= 2 < 32
    assert sum(model.batch_sizes) == batcher.rows == 32
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 4), 2.0 * i))


def test_each_caller_gets_exactly_its_own_rows_back():
    model = FakeModel()
    batcher = ContinuousBatcher("test.own_rows", model, max_batch=64)
    inputs = [{"x": np.arange(k * 4, dtype=np.float32).reshape(k, 4) + 100 * k} for k in (1, 2, 3, 4)]

    async def scenario():
        return await asyncio.gather(*(batcher.submit(x) for x in inputs))

    results = asyncio.run(scenario())
    assert batcher.runs == 1
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result["y"], x["x"] * 2)


def test_answered_callers_rejoin_the_next_run_instead_of_alternating():
    # Cohort B arrives while cohort A's first run is in flight. Continuous batching must merge
    # them from the second run on (6 runs for 5 steps each), not alternate A, B, A, B (10 runs).
    model = FakeModel(gated=True)
    batcher = ContinuousBatcher("test.lockstep", model, max_batch=64)

    async def sampler(value: float):
        x = rows(value)
        for _ in range(5):
            x = {"x": (await batcher.submit(x))["y"] / 2}

    async def scenario():
        cohort_a = [asyncio.create_task(sampler(1.0)) for _ in range(8)]
        await model.in_flight()  # A's first run, held at the gate
        cohort_b = [asyncio.create_task(sampler(2.0)) for _ in range(8)]
        await wait_for_queued(batcher, 8)
        model.gate.set()
        await asyncio.gather(*cohort_a, *cohort_b)

    asyncio.run(scenario())
    assert model.batch_sizes == [8, 16, 16, 16, 16, 8]


def test_runs_happen_in_the_batchers_own_thread():
    model = FakeModel()
    batcher = ContinuousBatcher("test.thread", model, max_batch=8)
    asyncio.run(batcher.submit(rows(1.0)))
    assert model.threads and all(name.startswith("batcher-test.thread") for name in model.threads)


def test_cancelled_caller_rows_never_reach_run_batch_when_cancelled_while_queued():
    model = FakeModel(gated=True)
    batcher = ContinuousBatcher("test.cancel_queued", model, max_batch=64)
    cancelled_before = sample("atelier_rows_cancelled_total", "test.cancel_queued")

    async def scenario():
        blocker = asyncio.create_task(batcher.submit(rows(1.0)))
        await model.in_flight()  # blocker's run, held at the gate
        victim = asyncio.create_task(batcher.submit(rows(-1.0, k=3)))
        await wait_for_queued(batcher, 3)
        victim.cancel()
        model.gate.set()
        later = await batcher.submit(rows(2.0))
        await blocker
        with pytest.raises(asyncio.CancelledError):
            await victim
        return later

    later = asyncio.run(scenario())
    np.testing.assert_array_equal(later["y"], np.full((1, 4), 4.0))
    assert not model.saw(-1.0)
    assert batcher.rows_cancelled == 3 and batcher.queued_rows == 0
    assert sample("atelier_rows_cancelled_total", "test.cancel_queued") - cancelled_before == 3


def test_rows_cancelled_before_their_caller_resumes_are_skipped_by_the_next_run():
    # Task.cancel() cancels the awaited future at once, but the caller withdraws its rows only
    # when it next runs; a worker taking the queue in between must skip them.
    model = FakeModel()
    batcher = ContinuousBatcher("test.cancel_race", model, max_batch=64)

    async def scenario():
        victim = asyncio.create_task(batcher.submit(rows(-1.0, k=2)))
        await asyncio.sleep(0)  # victim queued; the new worker is scheduled before the victim resumes
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        return await batcher.submit(rows(1.0))

    later = asyncio.run(scenario())
    np.testing.assert_array_equal(later["y"], np.full((1, 4), 2.0))
    assert not model.saw(-1.0)
    assert batcher.rows_cancelled == 2 and batcher.queued_rows == 0


def test_caller_cancelled_in_flight_loses_its_result_not_its_batch_mates():
    model = FakeModel(gated=True)
    batcher = ContinuousBatcher("test.cancel_in_flight", model, max_batch=64)

    async def scenario():
        mate = asyncio.create_task(batcher.submit(rows(1.0)))
        victim = asyncio.create_task(batcher.submit(rows(5.0)))
        await model.in_flight()  # both are in the run now, held at the gate
        victim.cancel()
        await asyncio.sleep(0)  # the victim's cancellation is delivered while its run is held
        model.gate.set()
        return await mate

    mate = asyncio.run(scenario())
    np.testing.assert_array_equal(mate["y"], np.full((1, 4), 2.0))
    assert model.batch_sizes == [2]
    assert batcher.rows_cancelled == 0


def test_run_failure_fails_only_that_runs_callers_and_later_submits_succeed():
    model = FakeModel(gated=True, fail_when=lambda batch: bool((batch["x"] < 0).any()))
    batcher = ContinuousBatcher("test.failure", model, max_batch=64)

    async def scenario():
        poisoned = asyncio.create_task(batcher.submit(rows(-1.0)))
        batch_mate = asyncio.create_task(batcher.submit(rows(1.0)))
        await model.in_flight()  # that run is held at the gate; the next caller queues behind it
        next_run = asyncio.create_task(batcher.submit(rows(3.0)))
        await wait_for_queued(batcher, 1)
        model.gate.set()
        outcomes = await asyncio.gather(poisoned, batch_mate, next_run, return_exceptions=True)
        later = await batcher.submit(rows(4.0))
        return outcomes, later

    (poisoned, batch_mate, next_run), later = asyncio.run(scenario())
    assert isinstance(poisoned, RuntimeError) and isinstance(batch_mate, RuntimeError)
    np.testing.assert_array_equal(next_run["y"], np.full((1, 4), 6.0))
    np.testing.assert_array_equal(later["y"], np.full((1, 4), 8.0))
    assert model.batch_sizes == [2, 1, 1]


class WorkerKilled(BaseException):
    """Escapes the worker's `except Exception`, to simulate a worker that dies."""


def test_worker_that_dies_fails_its_callers_and_restarts_on_next_submit():
    calls = []

    def run_batch(batch):
        calls.append(batch["x"].shape[0])
        if len(calls) == 1:
            raise WorkerKilled
        return {"y": batch["x"] * 2}

    batcher = ContinuousBatcher("test.worker_death", run_batch, max_batch=8)

    async def scenario():
        with pytest.raises(BatcherStopped, match="worker died"):
            await batcher.submit(rows(1.0))
        return await batcher.submit(rows(2.0))

    result = asyncio.run(scenario())
    np.testing.assert_array_equal(result["y"], np.full((1, 4), 4.0))
    assert calls == [1, 1]


def test_submission_larger_than_max_batch_is_split_and_rejoined_in_order():
    model = FakeModel()
    batcher = ContinuousBatcher("test.split", model, max_batch=4)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)

    result = asyncio.run(batcher.submit({"x": x}))
    assert model.batch_sizes == [4, 4, 2]
    np.testing.assert_array_equal(result["y"], x * 2)


def test_token_ids_of_different_lengths_are_right_padded_with_zeros():
    seen = []

    def embed(batch):
        seen.append(batch["input_ids"].copy())
        lengths = batch["attention_mask"].sum(axis=1, keepdims=True)
        return {"embedding": np.repeat(lengths, 3, axis=1).astype(np.float32)}

    batcher = ContinuousBatcher("test.padding", embed, max_batch=8)
    short = {"input_ids": np.array([[7, 8]]), "attention_mask": np.ones((1, 2), np.int64)}
    long = {"input_ids": np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), "attention_mask": np.ones((2, 4), np.int64)}

    async def scenario():
        return await asyncio.gather(batcher.submit(short), batcher.submit(long))

    short_result, long_result = asyncio.run(scenario())
    np.testing.assert_array_equal(seen[0], [[7, 8, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(short_result["embedding"], [[2, 2, 2]])
    np.testing.assert_array_equal(long_result["embedding"], [[4, 4, 4], [4, 4, 4]])


def test_without_a_gather_window_each_arrival_runs_at_once():
    model = FakeModel()
    batcher = ContinuousBatcher("test.gather_none", model, max_batch=64, gather_ms=0.0)

    async def scenario():
        return [await batcher.submit(rows(float(i))) for i in range(3)]  # each arrives after the last is answered

    results = asyncio.run(scenario())
    assert batcher.runs == 3
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 4), 2.0 * i))


def test_gather_window_merges_staggered_arrivals_and_ends_when_the_batch_is_full():
    # a window far longer than any test: only a full batch can end it, so one run means both that the
    # window waited for the later arrivals and that it ended early, without a clock deciding either
    model = FakeModel()
    batcher = ContinuousBatcher("test.gather_full", model, max_batch=3, gather_ms=600_000.0)

    async def scenario():
        tasks = []
        for i in range(3):
            tasks.append(asyncio.create_task(batcher.submit(rows(float(i)))))
            await wait_for_queued(batcher, i + 1)  # staggered: each arrives after the last has queued
        return await asyncio.wait_for(asyncio.gather(*tasks), HANG_SECONDS)

    results = asyncio.run(scenario())
    assert batcher.runs == 1 and model.batch_sizes == [3]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 4), 2.0 * i))


def test_a_gather_window_that_expires_runs_what_it_has():
    batcher = ContinuousBatcher("test.gather_expires", FakeModel(), max_batch=64, gather_ms=1.0)
    result = asyncio.run(asyncio.wait_for(batcher.submit(rows(1.0)), HANG_SECONDS))
    np.testing.assert_array_equal(result["y"], np.full((1, 4), 2.0))
    assert batcher.runs == 1


def test_queue_is_taken_fifo_and_a_chunk_that_does_not_fit_waits_for_the_next_run():
    model = FakeModel()
    batcher = ContinuousBatcher("test.fifo", model, max_batch=4)

    async def scenario():
        await asyncio.gather(
            batcher.submit(rows(1.0, 3)), batcher.submit(rows(2.0, 2)), batcher.submit(rows(3.0))
        )

    asyncio.run(scenario())
    assert model.batch_sizes == [3, 3]
    np.testing.assert_array_equal(model.batches[1]["x"][:, 0], [2.0, 2.0, 3.0])


def test_runs_are_measured_in_prometheus_metrics():
    function = "test.metrics"
    runs_before = sample("atelier_batch_rows_count", function)
    rows_before = sample("atelier_batch_rows_sum", function)
    waits_before = sample("atelier_queue_wait_seconds_count", function)
    batcher = ContinuousBatcher(function, FakeModel(seconds=0.02), max_batch=64)

    async def scenario():
        await asyncio.gather(*(batcher.submit(rows(1.0, 2)) for _ in range(5)))

    asyncio.run(scenario())
    assert sample("atelier_batch_rows_count", function) - runs_before == batcher.runs == 1
    assert sample("atelier_batch_rows_sum", function) - rows_before == 10
    assert sample("atelier_queue_wait_seconds_count", function) - waits_before == 5
    assert sample("atelier_batch_seconds_sum", function) >= 0.02  # the model's own time, as slept
    assert sample("atelier_queue_depth", function) == 0


def test_submission_whose_arrays_disagree_on_rows_is_refused_before_queueing():
    batcher = ContinuousBatcher("test.refuse", FakeModel(), max_batch=8)
    with pytest.raises(ValueError, match="same number"):
        asyncio.run(batcher.submit({"x": np.zeros((2, 4)), "t": np.zeros((3,))}))
    assert batcher.queued_rows == 0


def test_stop_refuses_later_submits():
    batcher = ContinuousBatcher("test.stop", FakeModel(), max_batch=8)

    async def scenario():
        await batcher.submit(rows(1.0))
        await batcher.stop()
        with pytest.raises(BatcherStopped):
            await batcher.submit(rows(2.0))

    asyncio.run(scenario())
