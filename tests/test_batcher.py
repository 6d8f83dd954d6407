"""Specifications of the continuous batcher, driven by a numpy fake of an ONNX run.

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

RUN_SECONDS = 0.02


class FakeModel:
    """Doubles `x` after a short sleep (standing in for an ONNX run) and records every batch."""

    def __init__(self, seconds: float = RUN_SECONDS, fail_when: Callable[[dict], bool] | None = None):
        self.seconds = seconds
        self.fail_when = fail_when
        self.batches: list[dict[str, np.ndarray]] = []
        self.threads: set[str] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append({name: array.copy() for name, array in batch.items()})
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        if self.fail_when is not None and self.fail_when(batch):
            raise RuntimeError("model exploded")
        return {"y": batch["x"] * 2}

    @property
    def batch_sizes(self) -> list[int]:
        return [batch["x"].shape[0] for batch in self.batches]

    def saw(self, value: float) -> bool:
        return any((batch["x"] == value).any() for batch in self.batches)


def rows(value: float, k: int = 1) -> dict[str, np.ndarray]:
    """k rows of shape (4,), all equal to `value`, so a row's origin is visible in any batch."""
    return {"x": np.full((k, 4), value, dtype=np.float32)}


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
    model = FakeModel()
    batcher = ContinuousBatcher("test.lockstep", model, max_batch=64)

    async def sampler(value: float):
        x = rows(value)
        for _ in range(5):
            x = {"x": (await batcher.submit(x))["y"] / 2}

    async def scenario():
        cohort_a = [asyncio.create_task(sampler(1.0)) for _ in range(8)]
        await asyncio.sleep(RUN_SECONDS / 4)
        cohort_b = [asyncio.create_task(sampler(2.0)) for _ in range(8)]
        await asyncio.gather(*cohort_a, *cohort_b)

    asyncio.run(scenario())
    assert model.batch_sizes == [8, 16, 16, 16, 16, 8]


def test_runs_happen_in_the_batchers_own_thread():
    model = FakeModel(seconds=0)
    batcher = ContinuousBatcher("test.thread", model, max_batch=8)
    asyncio.run(batcher.submit(rows(1.0)))
    assert model.threads and all(name.startswith("batcher-test.thread") for name in model.threads)


def test_cancelled_caller_rows_never_reach_run_batch_when_cancelled_while_queued():
    model = FakeModel(seconds=0.05)
    batcher = ContinuousBatcher("test.cancel_queued", model, max_batch=64)
    cancelled_before = sample("atelier_rows_cancelled_total", "test.cancel_queued")

    async def scenario():
        blocker = asyncio.create_task(batcher.submit(rows(1.0)))
        await asyncio.sleep(0.01)  # blocker's run is now in flight
        victim = asyncio.create_task(batcher.submit(rows(-1.0, k=3)))
        await asyncio.sleep(0)
        assert batcher.queued_rows == 3
        victim.cancel()
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
    model = FakeModel(seconds=0)
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
    model = FakeModel(seconds=0.05)
    batcher = ContinuousBatcher("test.cancel_in_flight", model, max_batch=64)

    async def scenario():
        mate = asyncio.create_task(batcher.submit(rows(1.0)))
        victim = asyncio.create_task(batcher.submit(rows(5.0)))
        await asyncio.sleep(0.01)  # both are in the run now
        victim.cancel()
        return await mate

    mate = asyncio.run(scenario())
    np.testing.assert_array_equal(mate["y"], np.full((1, 4), 2.0))
    assert model.batch_sizes == [2]
    assert batcher.rows_cancelled == 0


def test_run_failure_fails_only_that_runs_callers_and_later_submits_succeed():
    model = FakeModel(fail_when=lambda batch: bool((batch["x"] < 0).any()))
    batcher = ContinuousBatcher("test.failure", model, max_batch=64)

    async def scenario():
        poisoned = asyncio.create_task(batcher.submit(rows(-1.0)))
        batch_mate = asyncio.create_task(batcher.submit(rows(1.0)))
        await asyncio.sleep(RUN_SECONDS / 4)  # that run is in flight; the next caller queues
        next_run = asyncio.create_task(batcher.submit(rows(3.0)))
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
    model = FakeModel(seconds=0)
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


@pytest.mark.parametrize(("gather_ms", "expected_runs"), [(0.0, 3), (100.0, 1)])
def test_gather_window_merges_staggered_arrivals(gather_ms, expected_runs):
    model = FakeModel(seconds=0)
    batcher = ContinuousBatcher(f"test.gather_{gather_ms}", model, max_batch=64, gather_ms=gather_ms)

    async def arrive_after(seconds: float, value: float):
        await asyncio.sleep(seconds)
        return await batcher.submit(rows(value))

    async def scenario():
        return await asyncio.gather(*(arrive_after(0.015 * i, float(i)) for i in range(3)))

    results = asyncio.run(scenario())
    assert batcher.runs == expected_runs
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 4), 2.0 * i))


def test_full_batch_ends_the_gather_window_early():
    batcher = ContinuousBatcher("test.gather_full", FakeModel(seconds=0), max_batch=4, gather_ms=5000)
    started = time.perf_counter()
    asyncio.run(batcher.submit(rows(1.0, k=4)))
    assert time.perf_counter() - started < 1.0


def test_queue_is_taken_fifo_and_a_chunk_that_does_not_fit_waits_for_the_next_run():
    model = FakeModel(seconds=0)
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
    batcher = ContinuousBatcher(function, FakeModel(), max_batch=64)

    async def scenario():
        await asyncio.gather(*(batcher.submit(rows(1.0, 2)) for _ in range(5)))

    asyncio.run(scenario())
    assert sample("atelier_batch_rows_count", function) - runs_before == batcher.runs == 1
    assert sample("atelier_batch_rows_sum", function) - rows_before == 10
    assert sample("atelier_queue_wait_seconds_count", function) - waits_before == 5
    assert sample("atelier_batch_seconds_sum", function) >= RUN_SECONDS
    assert sample("atelier_queue_depth", function) == 0


def test_submission_whose_arrays_disagree_on_rows_is_refused_before_queueing():
    batcher = ContinuousBatcher("test.refuse", FakeModel(), max_batch=8)
    with pytest.raises(ValueError, match="same number"):
        asyncio.run(batcher.submit({"x": np.zeros((2, 4)), "t": np.zeros((3,))}))
    assert batcher.queued_rows == 0


def test_stop_refuses_later_submits():
    batcher = ContinuousBatcher("test.stop", FakeModel(seconds=0), max_batch=8)

    async def scenario():
        await batcher.submit(rows(1.0))
        await batcher.stop()
        with pytest.raises(BatcherStopped):
            await batcher.submit(rows(2.0))

    asyncio.run(scenario())
