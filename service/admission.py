"""Admission by predicted wait: admit a request while the model work queued ahead of it and its own are
predicted to finish within `max_queue_seconds`; refuse it otherwise, with the predicted wait for the
work ahead as its Retry-After.

Every admitted request holds a `Ticket` with its plan (pipelines.planned_rows: rows per model
function), counted down by the batchers as its runs finish. The work ahead of a new request is that
of every live ticket of its priority or a higher one (interactive is ahead of batch; batch is
never ahead of interactive, which the batchers serve first). Per function it costs

    runs x fixed + rows x per_row,   runs = max(ceil(rows / max_batch), the most steps any ticket has left)

with `fixed` and `per_row` each batcher's own online fit of its measured runs (batcher.RunCost),
so the prediction follows the hardware, its load and the model without a hand-tuned constant.
Functions are summed: on one machine they share the cores (or the accelerator).

The wait for an interactive request arriving now and the pending work are exported as gauges
(`atelier_predicted_wait_seconds`, `atelier_pending_work_seconds`): the autoscaling signal.

    .venv/bin/python -m pytest tests/test_admission.py -q
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Mapping, Sequence

from service import metrics
from service.batcher import BATCH, INTERACTIVE, ContinuousBatcher, Ticket
from service.errors import Overloaded
from service.pipelines import GenerateRequest, planned_rows

PRIORITY_OF = {"interactive": INTERACTIVE, "batch": BATCH}

# When the transport first saw the current request (time.perf_counter()); the time it has already spent in
# the server (reading its body, waiting for a busy event loop) counts toward its predicted completion.
ARRIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("atelier_arrived", default=None)


class Admission:
    def __init__(self, batchers: Mapping[str, ContinuousBatcher], max_queue_seconds: float, max_inflight: int):
        self.batchers = batchers
        self.max_queue_seconds = max_queue_seconds
        self.max_inflight = max_inflight
        self.live: set[Ticket] = set()

    def ticket(self, requests: Sequence[GenerateRequest]) -> Ticket:
        """The plan of one client request (OIP sends a row per image: their plans add up)."""
        remaining: dict[str, int] = {}
        per_run: dict[str, int] = {}
        for request in requests:
            for function, (rows, rows_per_run) in planned_rows(request).items():
                remaining[function] = remaining.get(function, 0) + rows
                per_run[function] = per_run.get(function, 0) + rows_per_run  # rows of one request run together
        return Ticket(PRIORITY_OF[requests[0].priority], time.perf_counter(), remaining, per_run)

    def predicted_wait(self, priority: int) -> float:
        """Seconds until the work now ahead of a new request of `priority` is done."""
        return self.predicted_waits(priority)[-1]

    def predicted_waits(self, up_to: int = BATCH) -> list[float]:
        """`predicted_wait` of every priority from INTERACTIVE to `up_to`, in one pass over the live tickets
        (each priority's work is that of its own tickets and of every higher priority's)."""
        rows: list[dict[str, int]] = [{} for _ in range(up_to + 1)]  # per priority: function -> rows left
        runs: list[dict[str, int]] = [{} for _ in range(up_to + 1)]  # per priority: function -> most runs left
        for ticket in self.live:
            if ticket.priority > up_to:
                continue
            rows_of, runs_of = rows[ticket.priority], runs[ticket.priority]
            for function, left in ticket.remaining_rows.items():
                if left:
                    rows_of[function] = rows_of.get(function, 0) + left
                    runs_of[function] = max(runs_of.get(function, 0), ticket.remaining_runs(function))
        waits, rows_ahead, runs_ahead = [], {}, {}
        for rows_of, runs_of in zip(rows, runs):
            for function, left in rows_of.items():
                rows_ahead[function] = rows_ahead.get(function, 0) + left
                runs_ahead[function] = max(runs_ahead.get(function, 0), runs_of[function])
            waits.append(self._seconds(rows_ahead, runs_ahead))
        return waits

    def _seconds(self, rows: Mapping[str, int], runs: Mapping[str, int]) -> float:
        seconds = 0.0
        for function, left in rows.items():
            batcher = self.batchers.get(function)
            if batcher is not None:
                seconds += batcher.cost.seconds(left, max(runs[function], math.ceil(left / batcher.max_batch)))
        return seconds

    def own_seconds(self, ticket: Ticket) -> float:
        """The request's own work alone: its rows, and a run per step (its steps cannot share a run)."""
        return sum(self.batchers[function].cost.seconds(rows, ticket.remaining_runs(function))
                   for function, rows in ticket.remaining_rows.items() if function in self.batchers)

    def admit(self, requests: Sequence[GenerateRequest]) -> Ticket:
        """A live ticket for `requests` if their predicted completion (the time already spent in the server,
        the work ahead, then their own) is within the budget, or if no work is ahead of them (a request
        longer than the budget on its own still runs on an idle server); otherwise Overloaded (429) with
        Retry-After = the predicted wait for the work ahead."""
        ticket = self.ticket(requests)
        wait = self.predicted_wait(ticket.priority)
        arrived = ARRIVED.get()
        completion = (ticket.arrival - arrived if arrived is not None else 0.0) + wait + self.own_seconds(ticket)
        if wait > 0.0 and completion > self.max_queue_seconds:
            self.publish()
            raise Overloaded(f"this {requests[0].priority} request is predicted to finish in {completion:.1f} s, "
                             f"{wait:.1f} s of it behind queued work (budget {self.max_queue_seconds:g} s); "
                             "retry later", retry_after=wait)
        if len(self.live) >= self.max_inflight:
            raise Overloaded(f"{len(self.live)} requests in flight (limit {self.max_inflight}); retry later",
                             retry_after=max(wait, 1.0))
        self.live.add(ticket)
        self.publish()
        return ticket

    def finish(self, ticket: Ticket) -> None:
        self.live.discard(ticket)
        self.publish()

    def publish(self) -> None:
        """The autoscaling signal, per pod: the wait a new interactive request would have, and all pending work."""
        # one pass for both: this runs twice per request, over every live ticket
        interactive, pending = self.predicted_waits(BATCH)
        metrics.PREDICTED_WAIT_SECONDS.set(interactive)
        metrics.PENDING_WORK_SECONDS.set(pending)

