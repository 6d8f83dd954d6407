"""Load shapes as pure functions of elapsed time: how many users run and how fast they start. The Locust
`LoadTestShape` classes (steady.py, ramp.py, spike.py, one per file so `-f` picks exactly one) call these,
so the shapes can be checked without starting Locust.

Each takes the run's common options (`--users`, `--spawn-rate`, `--run-time`) and returns
(users, spawn rate per second) for the moment `elapsed` seconds into the run, or None once the run is over.

    .venv/bin/python -c "from loadtests.shapes import spike; print([spike(t, 4, 2, 100) for t in (0, 40, 80)])"
"""

from __future__ import annotations

import math

Tick = tuple[int, float] | None

SPIKE_FACTOR = 4  # the spike runs this many times the base users
SPIKE_START, SPIKE_END = 0.3, 0.55  # fractions of the run: base load, then the spike, then recovery at base
RAMP_HOLD = 0.2  # the ramp reaches --users after 80 % of the run and holds there


def steady(elapsed: float, users: int, spawn_rate: float, run_time: float) -> Tick:
    """--users for the whole run, started at --spawn-rate."""
    return (users, spawn_rate) if elapsed < run_time else None


def ramp(elapsed: float, users: int, spawn_rate: float, run_time: float) -> Tick:
    """One user more at a time, evenly, from 1 to --users over the first 80 % of the run, then hold: the
    point where latency turns up is the capacity."""
    if elapsed >= run_time:
        return None
    climb = run_time * (1 - RAMP_HOLD)
    return max(1, min(users, 1 + math.floor((users - 1) * elapsed / climb))), spawn_rate


def spike(elapsed: float, users: int, spawn_rate: float, run_time: float, factor: int = SPIKE_FACTOR) -> Tick:
    """--users, then `factor` times as many at once (all started within a second), then back to --users:
    does the service shed the excess (429 + Retry-After) and recover, with admitted requests in their SLO?"""
    if elapsed >= run_time:
        return None
    if SPIKE_START * run_time <= elapsed < SPIKE_END * run_time:
        return users * factor, float(users * factor)
    return users, spawn_rate if elapsed < SPIKE_START * run_time else float(users * factor)
