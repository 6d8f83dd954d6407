"""Admission by predicted wait, priorities and the step scheduler, in process (no HTTP, no clock in any
verdict: cost models are fed numbers, runs are held at gates)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service import rules
from service.admission import ARRIVED, PRIORITY_OF, Admission
from service.batcher import BATCH, INTERACTIVE, TICKET, ContinuousBatcher, RunCost, Ticket
from service.errors import Overloaded
from service.pipelines import GenerateRequest, planned_rows

HANG_SECONDS = 30.0


def test_run_cost_recovers_fixed_and_per_row_cost_from_runs_of_several_sizes():
    cost = RunCost()
    for rows in (1, 8, 64, 3, 32) * 10:
        cost.observe(rows, 0.002 + 0.0005 * rows)
    assert cost.fixed == pytest.approx(0.002, rel=0.02) and cost.per_row == pytest.approx(0.0005, rel=0.02)
    assert cost.seconds(100, runs=4) == pytest.approx(4 * 0.002 + 100 * 0.0005, rel=0.02)


def test_run_cost_from_one_size_only_charges_everything_per_row():
    cost = RunCost()
    for _ in range(20):
        cost.observe(16, 0.016)
    assert cost.fixed == pytest.approx(0.0, abs=1e-4) and cost.per_row == pytest.approx(0.001, rel=0.01)


def test_run_cost_follows_a_change_of_hardware_speed():
    cost = RunCost(decay=0.9)
    for rows in (1, 64) * 50:
        cost.observe(rows, 0.001 * rows)
    for rows in (1, 64) * 50:
        cost.observe(rows, 0.004 * rows)  # four times slower now (a busy neighbour, a throttled card)
    assert cost.per_row == pytest.approx(0.004, rel=0.05)


def test_plans_count_guided_rows_per_step_and_the_decode():
    guided = planned_rows(GenerateRequest(model="diffusion", n=2, steps=30, guidance=3.0, prompt="a cat"))
    assert guided == {"text.embed": (1, 1), "diffusion.denoise": (120, 4), "vae.decode": (2, 2)}
    unguided = planned_rows(GenerateRequest(model="diffusion", n=2, steps=30, guidance=1.0))
    assert unguided["diffusion.denoise"] == (60, 2)
    assert planned_rows(GenerateRequest(model="dcgan", n=5, class_id=1)) == {"dcgan.generate": (5, 5)}
    edit = planned_rows(GenerateRequest(model="diffusion", steps=30, strength=0.5, init_image=np.zeros((32, 32, 3))))
    assert edit["diffusion.denoise"] == (30, 2) and edit["vae.encode"] == (1, 1)


class FixedCost(RunCost):
    """A cost model that learns nothing: the test says what runs cost."""

    def __init__(self, fixed: float, per_row: float):
        super().__init__()
        self.fixed, self.per_row = fixed, per_row

    def observe(self, rows: int, seconds: float) -> None:
        pass


class FixedCostBatcher:
    """What Admission reads of a batcher: its cost model and row cap."""

    def __init__(self, fixed: float, per_row: float, max_batch: int = 64):
        self.cost = FixedCost(fixed, per_row)
        self.max_batch = max_batch


def admission(budget: float = 1.0, max_inflight: int = 100) -> Admission:
    batchers = {"diffusion.denoise": FixedCostBatcher(0.001, 0.0005), "vae.decode": FixedCostBatcher(0.0, 0.002),
                "dcgan.generate": FixedCostBatcher(0.0, 0.002), "text.embed": FixedCostBatcher(0.0, 0.005)}
    return Admission(batchers, budget, max_inflight)


def test_predicted_wait_prices_every_live_tickets_remaining_runs_and_rows():
    gate = admission(budget=100.0)
    gate.admit([GenerateRequest(model="diffusion", steps=50, guidance=3.0)])  # 100 rows in 50 runs, 1 decode
    gate.admit([GenerateRequest(model="dcgan", n=4, class_id=0)])
    expected = (50 * 0.001 + 100 * 0.0005) + 1 * 0.002 + 4 * 0.002
    assert gate.predicted_wait(INTERACTIVE) == pytest.approx(expected)


def test_the_countdown_of_finished_runs_shortens_the_wait_and_finishing_clears_it():
    gate = admission(budget=100.0)
    ticket = gate.admit([GenerateRequest(model="diffusion", steps=10, guidance=1.0)])
    before = gate.predicted_wait(INTERACTIVE)
    ticket.ran("diffusion.denoise", 5)
    assert gate.predicted_wait(INTERACTIVE) == pytest.approx(before - 5 * (0.001 + 0.0005))
    gate.finish(ticket)
    assert gate.predicted_wait(INTERACTIVE) == 0.0


def test_a_request_past_the_budget_is_refused_with_the_predicted_wait_as_retry_after():
    gate = admission(budget=0.5)
    diffusion = GenerateRequest(model="diffusion", n=4, steps=50)  # 50 runs of 8 rows, 4 decodes: 0.258 s
    gate.admit([diffusion])
    assert gate.admit([GenerateRequest(model="dcgan")])  # 0.258 s ahead + 0.002 s of its own: within 0.5 s
    wait = gate.predicted_wait(INTERACTIVE)
    assert wait == pytest.approx(0.26)
    with pytest.raises(Overloaded, match="predicted to finish in") as refused:
        gate.admit([diffusion])  # 0.26 s ahead + 0.258 s of its own: past 0.5 s
    assert refused.value.retry_after == pytest.approx(wait)
    assert REGISTRY.get_sample_value("atelier_predicted_wait_seconds") == pytest.approx(wait)


def test_the_time_a_request_already_spent_in_the_server_counts_toward_its_completion():
    gate = admission(budget=0.5)
    gate.admit([GenerateRequest(model="diffusion", n=4, steps=50)])  # 0.258 s ahead
    assert gate.admit([GenerateRequest(model="dcgan")])  # 0.258 + 0.002 s: admitted when it did not wait first
    token = ARRIVED.set(time.perf_counter() - 0.25)  # it waited 0.25 s for a busy event loop before admission
    try:
        with pytest.raises(Overloaded):
            gate.admit([GenerateRequest(model="dcgan")])
    finally:
        ARRIVED.reset(token)


def test_a_request_longer_than_the_budget_alone_still_runs_on_an_idle_server():
    gate = admission(budget=0.5)
    assert gate.admit([GenerateRequest(model="diffusion", n=16, steps=250)])  # 4.25 s of its own
    with pytest.raises(Overloaded):
        gate.admit([GenerateRequest(model="diffusion", n=16, steps=250)])


def test_batch_work_is_not_ahead_of_interactive_work_and_is_refused_first():
    gate = admission(budget=0.5)
    gate.admit([GenerateRequest(model="diffusion", n=4, steps=50, priority="batch")])  # 0.258 s
    gate.admit([GenerateRequest(model="diffusion", n=4, steps=40, priority="batch")])  # sharing runs: 0.426 s
    assert gate.predicted_wait(INTERACTIVE) == 0.0
    with pytest.raises(Overloaded):
        gate.admit([GenerateRequest(model="diffusion", n=4, steps=50, priority="batch")])
    assert gate.admit([GenerateRequest(model="dcgan")]).priority == INTERACTIVE
    assert REGISTRY.get_sample_value("atelier_pending_work_seconds") > 0.4


def test_the_in_flight_cap_is_a_safety_net_behind_the_budget():
    gate = admission(budget=1e6, max_inflight=3)
    for _ in range(3):
        gate.admit([GenerateRequest(model="dcgan")])
    with pytest.raises(Overloaded, match="in flight"):
        gate.admit([GenerateRequest(model="dcgan")])


def test_admission_knows_every_priority_a_client_may_name():
    assert set(PRIORITY_OF) == set(rules.PRIORITIES)


class GatedModel:
    """Doubles `x`; every run waits at `gate` (a test opens it), and announces that it began."""

    def __init__(self):
        self.gate, self.started = threading.Event(), threading.Semaphore(0)
        self.batches: list[np.ndarray] = []

    def __call__(self, batch):
        self.batches.append(batch["x"][:, 0].copy())
        self.started.release()
        assert self.gate.wait(HANG_SECONDS)
        return {"y": batch["x"] * 2}

    async def in_flight(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, HANG_SECONDS)


async def submit_as(batcher: ContinuousBatcher, ticket: Ticket | None, value: float, k: int = 1):
    TICKET.set(ticket)  # this task's context only
    return await batcher.submit({"x": np.full((k, 2), value, np.float32)})


async def queued(batcher: ContinuousBatcher, rows: int) -> None:
    for _ in range(10_000):
        if batcher.queued_rows >= rows:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{batcher.queued_rows} rows queued, expected {rows}")


def run_held(batcher: ContinuousBatcher, model: GatedModel, callers: list[tuple[Ticket | None, float, int]]):
    """A blocker's run is held at the gate while `callers` queue; then every run goes through."""

    async def scenario():
        blocker = asyncio.create_task(submit_as(batcher, None, -1.0))
        await model.in_flight()
        tasks = []
        for ticket, value, k in callers:
            tasks.append(asyncio.create_task(submit_as(batcher, ticket, value, k)))
            await queued(batcher, sum(c[2] for c in callers[: len(tasks)]))
        model.gate.set()
        await asyncio.gather(blocker, *tasks)

    asyncio.run(scenario())
    return [sorted(batch.tolist()) for batch in model.batches[1:]]


def test_interactive_rows_run_before_batch_rows_queued_earlier():
    model = GatedModel()
    batcher = ContinuousBatcher("test.priority", model, max_batch=2, batch_fill=100.0)
    old_batch, new_interactive = Ticket(BATCH, arrival=1.0), Ticket(INTERACTIVE, arrival=2.0)
    runs = run_held(batcher, model, [(old_batch, 1.0, 2), (new_interactive, 2.0, 2)])
    assert runs == [[2.0, 2.0], [1.0, 1.0]]


@pytest.mark.parametrize(("order", "first"), [
    ("age", 1.0),  # the oldest request runs first, whatever order its steps arrive in
    ("arrival", 5.0),  # each submission in turn
])
def test_the_queue_order_decides_which_request_runs_first(order, first):
    model = GatedModel()
    batcher = ContinuousBatcher(f"test.{order}", model, max_batch=2, order=order)
    young, old = Ticket(INTERACTIVE, arrival=5.0), Ticket(INTERACTIVE, arrival=1.0)
    runs = run_held(batcher, model, [(young, 5.0, 2), (old, 1.0, 2)])
    assert runs[0] == [first, first] and len(runs) == 2


def test_least_remaining_work_runs_first_when_asked():
    model = GatedModel()
    batcher = ContinuousBatcher("test.remaining", model, max_batch=2, order="remaining")
    long = Ticket(INTERACTIVE, arrival=1.0, remaining_rows={"test.remaining": 100})
    short = Ticket(INTERACTIVE, arrival=2.0, remaining_rows={"test.remaining": 4})
    runs = run_held(batcher, model, [(long, 1.0, 2), (short, 2.0, 2)])
    assert runs == [[2.0, 2.0], [1.0, 1.0]]


def test_batch_rows_fill_a_run_only_while_it_costs_within_the_fill_factor():
    model = GatedModel()
    batcher = ContinuousBatcher("test.fill", model, max_batch=64, batch_fill=2.0)
    batcher.cost = FixedCost(0.0, 0.001)  # CPU-like: a run costs in proportion to its rows
    interactive, bulk = Ticket(INTERACTIVE, arrival=2.0), Ticket(BATCH, arrival=1.0)
    runs = run_held(batcher, model, [(bulk, 1.0, 1)] * 10 + [(interactive, 2.0, 3)])
    assert runs[0] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]  # 3 interactive rows, 3 batch rows: twice the cost
    assert all(len(run) <= 2 for run in runs[1:])  # batch-only runs: at most twice one row's cost


def test_batch_submissions_come_in_pieces_no_larger_than_a_batch_only_run():
    model = GatedModel()
    batcher = ContinuousBatcher("test.pieces", model, max_batch=64, batch_fill=2.0)
    batcher.cost = FixedCost(0.0, 0.001)  # CPU-like: a batch-only run holds 2 rows
    runs = run_held(batcher, model, [(Ticket(BATCH, arrival=1.0), 1.0, 5)])
    assert [len(run) for run in runs] == [2, 2, 1]


def test_a_queued_chunk_wider_than_the_fill_limit_still_runs():
    # the first chunk taken always runs: if the cost model moves between submission and run, a chunk may
    # be wider than the limit, and it must not sit in the queue for ever (the worker would spin)
    model = GatedModel()
    batcher = ContinuousBatcher("test.fill_big", model, max_batch=64, batch_fill=1.5)  # no cost yet: no limit

    async def scenario():
        blocker = asyncio.create_task(submit_as(batcher, None, -1.0))
        await model.in_flight()
        bulk = asyncio.create_task(submit_as(batcher, Ticket(BATCH, arrival=1.0), 1.0, 4))
        await queued(batcher, 4)
        batcher.cost = FixedCost(0.0, 0.001)  # now the limit is one row
        model.gate.set()
        await asyncio.gather(blocker, bulk)

    asyncio.run(scenario())
    assert [sorted(batch.tolist()) for batch in model.batches[1:]] == [[1.0] * 4]


def test_on_accelerator_like_cost_batch_rows_fill_the_whole_run():
    model = GatedModel()
    batcher = ContinuousBatcher("test.fill_gpu", model, max_batch=16, batch_fill=1.5)
    batcher.cost = FixedCost(0.002, 0.00001)  # a run costs about the same at any size
    interactive, bulk = Ticket(INTERACTIVE, arrival=2.0), Ticket(BATCH, arrival=1.0)
    runs = run_held(batcher, model, [(bulk, 1.0, 1)] * 20 + [(interactive, 2.0, 1)])
    assert runs[0] == [1.0] * 15 + [2.0]


def test_a_finished_run_counts_down_its_tickets():
    model = GatedModel()
    model.gate.set()
    batcher = ContinuousBatcher("test.countdown", model, max_batch=8)
    ticket = Ticket(INTERACTIVE, remaining_rows={"test.countdown": 10}, rows_per_run={"test.countdown": 2})
    asyncio.run(submit_as(batcher, ticket, 1.0, k=2))
    assert ticket.remaining_rows["test.countdown"] == 8 and ticket.remaining_runs("test.countdown") == 4
