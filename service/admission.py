"""Admission by predicted wait: admit a request while the model work queued ahead of it is predicted
to finish within `max_queue_seconds`; refuse it otherwise with the prediction as its Retry-After.

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

import math
import time
from collections.abc import Mapping, Sequence

from service import metrics
from service.batcher import BATCH, INTERACTIVE, ContinuousBatcher, Ticket
from service.errors import Overloaded
from service.pipelines import GenerateRequest, planned_rows

PRIORITY_OF = {"interactive": INTERACTIVE, "batch": BATCH}


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
        rows: dict[str, int] = {}
        runs: dict[str, int] = {}
        for ticket in self.live:
            if ticket.priority > priority:
                continue
            for function, left in ticket.remaining_rows.items():
                if left:
                    rows[function] = rows.get(function, 0) + left
                    runs[function] = max(runs.get(function, 0), ticket.remaining_runs(function))
        seconds = 0.0
        for function, left in rows.items():
            batcher = self.batchers.get(function)
            if batcher is not None:
                seconds += batcher.cost.seconds(left, max(runs[function], math.ceil(left / batcher.max_batch)))
        return seconds

    def admit(self, requests: Sequence[GenerateRequest]) -> Ticket:
        """A live ticket for `requests`, or Overloaded (429) with Retry-After = the predicted wait."""
        ticket = self.ticket(requests)
        wait = self.predicted_wait(ticket.priority)
        if wait > self.max_queue_seconds:
            self.publish()
            raise Overloaded(f"the work queued ahead of this {requests[0].priority} request is predicted to take "
                             f"{wait:.1f} s (budget {self.max_queue_seconds:g} s); retry later", retry_after=wait)
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
        metrics.PREDICTED_WAIT_SECONDS.set(self.predicted_wait(INTERACTIVE))
        metrics.PENDING_WORK_SECONDS.set(self.predicted_wait(BATCH))

