"""Capacity simulation: an autoscaled Atelier fleet on a day of traffic with a 10x spike, against a static
fleet sized for the peak. This is where the autoscaling targets in k8s/overlays/*/autoscaling.yaml and the
admission budget in their ConfigMaps come from (docs/DEPLOY.md, "Targets").

A discrete-event simulation of N pods behind a Kubernetes Service:
- **Pod**: the service curve measured by bench/ (images/s served at concurrency c, interpolated), as a
  processor-sharing server over up to `batch_slots` requests (the batcher's row cap; every request in the
  batch advances at curve(c)/c), FIFO beyond. All requests of a profile are the benchmark's request, so
  they finish in arrival order.
- **Admission** (ATELIER_MAX_QUEUE_SECONDS, ATELIER_MAX_INFLIGHT): a request whose predicted wait exceeds
  the budget, or that finds the in-flight cap reached, is refused (429) and not retried.
- **Metrics**: each pod's `atelier_predicted_wait_seconds` and `atelier_pending_work_seconds`: the seconds
  its admitted work takes at its current batch's throughput (as service/admission.py predicts them; equal
  here, every simulated request being interactive), scraped every `scrape_s` from ready pods.
- **Autoscaler**: the HPA algorithm KEDA drives (Kubernetes' replica calculator and behaviour): every
  `sync_s`, per AverageValue trigger, replicas = ceil(sum / threshold) unless within the tolerance of
  the current count; the larger trigger wins; the scale-up and scale-down stabilisation windows (min /
  max of the recommendations inside them); rate limits (+100 % or +4 pods per 15 s up, -100 % down);
  min and max replicas.
- **Pods start** after the measured start-up (bench/startup.py, serve to /readyz) rounded up to the
  startup probe's period, plus `schedule_s`; removed pods stop taking requests and finish their own.
- **Routing**: uniformly random over ready pods (kube-proxy).

    .venv/bin/python -m bench.capacity --scale small                  # seconds (the suite runs this)
    flock /tmp/atelier-bench.lock .venv/bin/python -m bench.capacity --scale full --out docs/deploy
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import subprocess
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / "docs" / "perf" / "summary.json"
GPU_CHECK = ROOT / "docs" / "perf" / "gpu_h100.json"
STARTUP = ROOT / "docs" / "deploy" / "startup.json"

log = logging.getLogger("bench.capacity")


# ----------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Profile:
    """One pod's measured service: images/s at each concurrency, for one kind of request."""
    name: str
    request: str                                   # what one request is
    curve: tuple[tuple[int, float], ...]           # (concurrency, images/s), increasing concurrency
    batch_slots: int                               # requests sharing one batch (max_batch rows / rows per image)
    slo_s: float                                   # answered within this = good
    source: str

    def rate(self, in_service: int) -> float:
        """Images/s of a pod with `in_service` requests in its batch (linear between measured points)."""
        points = self.curve
        if in_service <= points[0][0]:
            return points[0][1]
        for (c0, r0), (c1, r1) in zip(points, points[1:]):
            if in_service <= c1:
                return r0 + (r1 - r0) * (in_service - c0) / (c1 - c0)
        return points[-1][1]

    @property
    def peak_rate(self) -> float:
        return self.rate(self.batch_slots)


def cpu_profile() -> Profile:
    served = json.loads(SUMMARY.read_text())["closed"]["diffusion"]
    curve = tuple(sorted((int(c), point["atelier"]["images_per_s"]["median"]) for c, point in served.items()))
    return Profile(
        name="cpu", request="diffusion, 10 steps, DPM-Solver++(2M), guidance 3, n=1 (bench/ closed loop)",
        curve=curve, batch_slots=32, slo_s=1.0,
        source="docs/perf/summary.json closed.diffusion.*.atelier.images_per_s (median of 3; make bench, "
               "2 CPU cores, commit 7774d52)")


def gpu_profile() -> Profile:
    check = json.loads(GPU_CHECK.read_text())["variants"]["cuda_fp16"]["diffusion_30_steps_images_per_s"]
    curve = tuple(sorted((int(c), rate) for c, rate in check.items()))
    return Profile(
        name="gpu", request="diffusion, 30 steps, n=1, fp16 on CUDA (in-process pipeline, no HTTP)",
        curve=curve, batch_slots=32, slo_s=2.0,
        source="docs/perf/gpu_h100.json variants.cuda_fp16.diffusion_30_steps_images_per_s (bench/gpu_check.py, "
               "one H100, commit 67400d1); in-process, so an upper bound on a served pod")


def measured_startup_s() -> float:
    return json.loads(STARTUP.read_text())["median_s"]


@dataclass(frozen=True)
class Autoscaler:
    """The HPA as KEDA configures it (k8s/base/scaledobject.yaml; defaults of kube-controller-manager)."""
    predicted_wait_target_s: float | None = 0.25  # per pod, AverageValue
    pending_work_target_s: float | None = 0.4     # per pod, AverageValue
    min_replicas: int = 2
    max_replicas: int = 40
    sync_s: float = 15.0                          # --horizontal-pod-autoscaler-sync-period
    tolerance: float = 0.1                        # --horizontal-pod-autoscaler-tolerance
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    scale_up_percent: float = 100.0               # per 15 s period
    scale_up_pods: int = 4                        # per 15 s period
    scale_down_percent: float = 100.0             # per 15 s period


@dataclass(frozen=True)
class Fleet:
    profile: Profile
    autoscaler: Autoscaler | None                 # None = a static fleet of `static_replicas`
    static_replicas: int = 0
    max_queue_s: float = 0.5                      # ATELIER_MAX_QUEUE_SECONDS
    max_inflight: int = 64                        # ATELIER_MAX_INFLIGHT
    startup_s: float = 3.78                       # bentoml serve -> /readyz (bench/startup.py)
    probe_period_s: float = 5.0                   # startupProbe.periodSeconds: readiness seen on a probe
    schedule_s: float = 2.0                       # scheduling + container start, image already on the node
    scrape_s: float = 15.0                        # ServiceMonitor interval


@dataclass(frozen=True)
class Trace:
    """A day of Poisson arrivals: a diurnal curve from trough to peak, and a 10x spike on top."""
    hours: float = 24.0
    peak_per_s: float = 60.0                      # diurnal peak, requests/s
    trough_fraction: float = 0.1                  # lowest rate as a fraction of the peak (at 04:00)
    spike_at_h: float = 11.0
    spike_minutes: float = 10.0
    spike_ramp_s: float = 60.0
    spike_factor: float = 10.0
    seed: int = 0

    def rate(self, t: np.ndarray) -> np.ndarray:
        hour = t / 3600.0
        diurnal = self.trough_fraction + (1 - self.trough_fraction) * 0.5 * (1 - np.cos(2 * np.pi * (hour - 4) / 24))
        start, end = self.spike_at_h * 3600, self.spike_at_h * 3600 + self.spike_minutes * 60
        ramp = np.clip(np.minimum(t - start, end - t) / self.spike_ramp_s, 0, 1)
        return self.peak_per_s * diurnal * (1 + (self.spike_factor - 1) * ramp)

    def arrivals(self) -> np.ndarray:
        """Arrival times (s) of a Poisson process whose rate is constant within each second."""
        rng = np.random.Generator(np.random.PCG64(self.seed))
        starts = np.arange(0.0, self.hours * 3600)
        counts = rng.poisson(self.rate(starts + 0.5))
        times = np.repeat(starts, counts) + rng.uniform(0, 1, counts.sum())
        return np.sort(times)


# ---------------------------------------------------------------------------------------- the pod

@dataclass
class Pod:
    """A processor-sharing batch of up to `slots` requests, FIFO behind it. Every request is one unit of
    work; `attained` is the work each request in the batch has received since the pod started, so the
    request that joined the batch first (smallest start mark) finishes first."""
    profile: Profile
    created_at: float
    ready_at: float
    batch: deque = field(default_factory=deque)    # (arrival time, attained-at-start) per request in service
    waiting: deque = field(default_factory=deque)  # arrival times
    attained: float = 0.0
    updated_at: float = 0.0
    version: int = 0
    removed_at: float | None = None
    start_marks: float = 0.0                       # sum of attained-at-start over the batch

    @property
    def in_system(self) -> int:
        return len(self.batch) + len(self.waiting)

    def advance(self, now: float) -> None:
        if self.batch:
            self.attained += (now - self.updated_at) * self.profile.rate(len(self.batch)) / len(self.batch)
        self.updated_at = now

    def next_completion(self) -> float:
        if not self.batch:
            return math.inf
        _, mark = self.batch[0]
        remaining = max(0.0, mark + 1.0 - self.attained)
        return self.updated_at + remaining * len(self.batch) / self.profile.rate(len(self.batch))

    def admit(self, now: float, arrival: float) -> None:
        self.advance(now)
        if len(self.batch) < self.profile.batch_slots:
            self.batch.append((arrival, self.attained))
            self.start_marks += self.attained
        else:
            self.waiting.append(arrival)
        self.version += 1

    def complete(self, now: float) -> float:
        """Finish the head of the batch; returns its arrival time."""
        self.advance(now)
        arrival, mark = self.batch.popleft()
        self.start_marks -= mark
        if self.waiting:
            self.batch.append((self.waiting.popleft(), self.attained))
            self.start_marks += self.attained
        self.version += 1
        return arrival

    def pending_work_s(self, now: float) -> float:
        """Seconds until the work admitted to this pod is done, at the throughput of its current batch:
        service/admission.py's prediction (runs x fixed + rows x per-row cost, fitted to measured runs).
        It is both gauges here: `atelier_predicted_wait_seconds` (the work ahead of a new interactive
        request) and `atelier_pending_work_seconds` (all work), equal when every request is interactive."""
        if not self.in_system:
            return 0.0
        self.advance(now)
        unfinished = len(self.batch) * (1.0 - self.attained) + self.start_marks + len(self.waiting)
        return unfinished / self.profile.rate(min(self.in_system, self.profile.batch_slots))


# ---------------------------------------------------------------------------------- the autoscaler

def hpa_desired(autoscaler: Autoscaler, current: int, pending_sum: float, wait_sum: float) -> int:
    """Replicas the HPA computes from its AverageValue metrics (the larger wins), before behaviour."""
    proposals = []
    for total, target in ((pending_sum, autoscaler.pending_work_target_s), (wait_sum, autoscaler.predicted_wait_target_s)):
        if target is None:
            continue
        ratio = total / (target * current)
        proposals.append(current if abs(ratio - 1) <= autoscaler.tolerance else math.ceil(total / target))
    return max(proposals)


def hpa_stabilised(autoscaler: Autoscaler, current: int, desired: int, history: deque, now: float) -> int:
    """Kubernetes' stabilizeRecommendationWithBehaviors, then its rate limits and the replica bounds.
    `history` holds (time, desired) of earlier syncs; this sync's is appended."""
    history.append((now, desired))
    while history and history[0][0] < now - max(autoscaler.scale_down_window_s, autoscaler.scale_up_window_s):
        history.popleft()
    up = min([d for t, d in history if t > now - autoscaler.scale_up_window_s] + [desired])
    down = max([d for t, d in history if t > now - autoscaler.scale_down_window_s] + [desired])
    recommendation = min(max(current, up), down)
    ceiling = max(math.floor(current * (1 + autoscaler.scale_up_percent / 100)), current + autoscaler.scale_up_pods)
    floor = math.ceil(current * (1 - autoscaler.scale_down_percent / 100))
    recommendation = min(max(recommendation, floor), ceiling)
    return min(max(recommendation, autoscaler.min_replicas), autoscaler.max_replicas)


# ----------------------------------------------------------------------------------- the simulation

ARRIVAL, COMPLETION, SCRAPE, SYNC, READY = range(5)


@dataclass
class Outcome:
    offered: int = 0
    answered: int = 0
    refused: int = 0
    within_slo: int = 0
    latencies: list = field(default_factory=list)
    pod_seconds: float = 0.0
    max_pods: int = 0
    timeline: list = field(default_factory=list)   # per minute: offered/s, ready pods, pods, refused, good

    def summary(self, slo_s: float) -> dict:
        latencies = np.array(self.latencies) if self.latencies else np.array([0.0])
        return {"offered": self.offered, "answered": self.answered, "refused": self.refused,
                "refused_fraction": self.refused / max(1, self.offered),
                "slo_s": slo_s,
                "slo_attainment_of_answered": self.within_slo / max(1, self.answered),
                "good_fraction_of_offered": self.within_slo / max(1, self.offered),
                "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95)),
                "p99_s": float(np.percentile(latencies, 99)),
                "pod_hours": self.pod_seconds / 3600, "max_pods": self.max_pods}


class FleetSimulation:
    """One fleet on one trace: arrivals in time order, and a heap of the events between them (a pod's next
    completion, a pod becoming ready, a Prometheus scrape, an HPA sync)."""

    def __init__(self, fleet: Fleet, trace: Trace):
        self.fleet, self.trace, self.profile, self.autoscaler = fleet, trace, fleet.profile, fleet.autoscaler
        self.ready_delay = math.ceil(fleet.startup_s / fleet.probe_period_s) * fleet.probe_period_s + fleet.schedule_s
        self.outcome = Outcome()
        self.pods: list[Pod] = []                  # created and not removed
        self.ready: list[Pod] = []
        self.draining: list[Pod] = []              # removed, finishing their own requests
        self.events: list = []                     # (time, sequence, kind, pod, version)
        self.sequence = 0
        self.scraped: list[float] = []             # each ready pod's pending work at the last scrape
        self.history: deque = deque()              # the HPA's (time, desired) recommendations
        self.minute = {"offered": 0, "refused": 0, "good": 0}
        self.next_minute = 60.0

    def run(self) -> Outcome:
        horizon = self.trace.hours * 3600
        for _ in range(self.fleet.static_replicas if self.autoscaler is None else self.autoscaler.min_replicas):
            self.add_pod(0.0, already_ready=True)
        if self.autoscaler is not None:
            self.push(self.fleet.scrape_s, SCRAPE)
            self.push(self.autoscaler.sync_s + self.fleet.scrape_s / 2, SYNC)
        arrivals = self.trace.arrivals()
        routes = np.random.Generator(np.random.PCG64(self.trace.seed + 1)).random(len(arrivals))
        for arrival, route in zip(arrivals.tolist(), routes.tolist()):
            self.handle_events_until(arrival)
            self.close_minutes_until(arrival)
            self.offer(arrival, route)
        self.handle_events_until(horizon)
        self.close_minutes_until(horizon)
        # the requests still in flight at the end finish; the autoscaler's loops stop
        self.events = [event for event in self.events if event[2] == COMPLETION]
        heapq.heapify(self.events)
        self.handle_events_until(math.inf)
        for pod in self.pods + self.draining:
            self.outcome.pod_seconds += horizon - pod.created_at
        self.outcome.max_pods = max(self.outcome.max_pods, len(self.pods))
        return self.outcome

    def push(self, time: float, kind: int, pod: Pod | None = None, version: int = 0) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (time, self.sequence, kind, pod, version))

    def offer(self, arrival: float, route: float) -> None:
        """A request reaches a random ready pod, whose admission takes or refuses it."""
        self.outcome.offered += 1
        self.minute["offered"] += 1
        pod = self.ready[int(route * len(self.ready))] if self.ready else None
        if pod is None or pod.in_system >= self.fleet.max_inflight or pod.pending_work_s(arrival) > self.fleet.max_queue_s:
            self.outcome.refused += 1
            self.minute["refused"] += 1
            return
        pod.admit(arrival, arrival)
        self.push(pod.next_completion(), COMPLETION, pod, pod.version)

    def handle_events_until(self, limit: float) -> None:
        while self.events and self.events[0][0] <= limit:
            now, _, kind, pod, version = heapq.heappop(self.events)
            if kind == COMPLETION and version == pod.version:
                self.complete(pod, now)
            elif kind == READY and pod in self.pods:
                self.ready.append(pod)
            elif kind == SCRAPE:
                self.scraped = [member.pending_work_s(now) for member in self.ready]
                self.push(now + self.fleet.scrape_s, SCRAPE)
            elif kind == SYNC:
                self.sync(now)
                self.push(now + self.autoscaler.sync_s, SYNC)

    def complete(self, pod: Pod, now: float) -> None:
        latency = now - pod.complete(now)
        self.outcome.answered += 1
        self.outcome.latencies.append(latency)
        if latency <= self.profile.slo_s:
            self.outcome.within_slo += 1
            self.minute["good"] += 1
        if pod.batch:
            self.push(pod.next_completion(), COMPLETION, pod, pod.version)
        elif pod.removed_at is not None:
            self.draining.remove(pod)
            self.outcome.pod_seconds += now - pod.created_at

    def sync(self, now: float) -> None:
        """One HPA sync on the last scrape; both gauges are the pod's pending work (every request is interactive)."""
        current = len(self.pods)
        work = sum(self.scraped)
        desired = hpa_desired(self.autoscaler, current, pending_sum=work, wait_sum=work)
        target = hpa_stabilised(self.autoscaler, current, desired, self.history, now)
        for _ in range(target - current):
            self.add_pod(now, already_ready=False)
        if target < current:
            self.remove_pods(current - target, now)
        self.outcome.max_pods = max(self.outcome.max_pods, len(self.pods))

    def add_pod(self, now: float, already_ready: bool) -> None:
        pod = Pod(self.profile, created_at=now, ready_at=now if already_ready else now + self.ready_delay, updated_at=now)
        self.pods.append(pod)
        if already_ready:
            self.ready.append(pod)
        else:
            self.push(pod.ready_at, READY, pod)

    def remove_pods(self, count: int, now: float) -> None:
        # a ReplicaSet deletes pods that are not ready first, then the newest
        for pod in sorted(self.pods, key=lambda p: (p.ready_at <= now, -p.created_at))[:count]:
            self.pods.remove(pod)
            if pod in self.ready:
                self.ready.remove(pod)
            pod.removed_at = now
            if pod.in_system:
                self.draining.append(pod)
            else:
                self.outcome.pod_seconds += now - pod.created_at

    def close_minutes_until(self, now: float) -> None:
        while now >= self.next_minute:
            minute = self.minute
            self.outcome.timeline.append((self.next_minute / 3600, minute["offered"] / 60, len(self.ready),
                                          len(self.pods) + len(self.draining), minute["refused"], minute["good"],
                                          minute["offered"]))
            minute.update(offered=0, refused=0, good=0)
            self.next_minute += 60.0


def simulate(fleet: Fleet, trace: Trace) -> Outcome:
    return FleetSimulation(fleet, trace).run()


# ----------------------------------------------------------------------------------- the experiment

SCALES = {
    # a day with its spike at 11:00 (peak of the day: 1.5 pods' full-batch throughput)
    "full": {"hours": 24.0, "spike_at_h": 11.0, "spike_minutes": 10.0},
    # a flat hour at a fifth of that peak with the spike at 0:24, 5 minutes long: a second, for the suite
    "small": {"hours": 1.0, "spike_at_h": 0.4, "spike_minutes": 5.0, "trough_fraction": 1.0},
}
PLOTTED = ("autoscaled (manifest targets)", "static, sized for the daily peak", "cold node: +60 s image pull")
STATIC_UTILISATION = 0.85       # a static fleet runs its pods at most this busy at its sizing point


def static_size(profile: Profile, rate_per_s: float) -> int:
    return math.ceil(rate_per_s / (STATIC_UTILISATION * profile.peak_rate))


def experiments(profile: Profile, trace: Trace, startup_s: float, scale: str) -> dict[str, Fleet]:
    """The fleets compared on one trace: the manifests' autoscaler, static fleets, and what each choice
    in the autoscaler is worth (one changed at a time)."""
    chosen = Fleet(profile, MANIFEST_TARGETS[profile.name], startup_s=startup_s,
                   max_queue_s=ADMISSION_BUDGET_S[profile.name], max_inflight=MAX_INFLIGHT[profile.name])
    spike_peak = float(trace.rate(np.arange(0.0, trace.hours * 3600)).max())
    fleets = {"autoscaled (manifest targets)": chosen,
              "static, sized for the spike": replace(chosen, autoscaler=None,
                                                     static_replicas=static_size(profile, spike_peak)),
              "static, sized for the daily peak": replace(chosen, autoscaler=None,
                                                          static_replicas=static_size(profile, trace.peak_per_s))}
    if scale == "full":
        targets, wait = chosen.autoscaler, chosen.autoscaler.predicted_wait_target_s
        fleets.update({
            "predicted-wait target x0.5": replace(chosen, autoscaler=replace(targets, predicted_wait_target_s=wait / 2)),
            "predicted-wait target x2": replace(chosen, autoscaler=replace(targets, predicted_wait_target_s=wait * 2)),
            "pending-work trigger only": replace(chosen, autoscaler=replace(targets, predicted_wait_target_s=None)),
            "admission budget x0.5": replace(chosen, max_queue_s=chosen.max_queue_s / 2),
            "admission budget x2": replace(chosen, max_queue_s=chosen.max_queue_s * 2),
            "cold node: +60 s image pull": replace(chosen, schedule_s=chosen.schedule_s + 60.0),
        })
    return fleets


# The targets k8s/overlays/{cpu,gpu}/autoscaling.yaml carry (tests/test_capacity.py keeps them equal), and
# why (docs/DEPLOY.md, "Targets"). A pod's wait cannot exceed its admission budget (admission refuses past
# it), so a per-pod target must lie between the wait of a lone request (1 / curve(1)) and the budget, and
# budget / target bounds how much one sync can grow the fleet.
MANIFEST_TARGETS = {
    # lone request 0.05 s, full batch 0.79 s; budget 0.5 s: 0.25 s lets one sync double the fleet
    "cpu": Autoscaler(predicted_wait_target_s=0.25, pending_work_target_s=0.4, min_replicas=2, max_replicas=30),
    # lone request 0.36 s, full batch 0.80 s (batching is nearly free): 0.6 s; budget 1.2 s
    "gpu": Autoscaler(predicted_wait_target_s=0.6, pending_work_target_s=1.0, min_replicas=2, max_replicas=24),
}
ADMISSION_BUDGET_S = {"cpu": 0.5, "gpu": 1.2}      # ATELIER_MAX_QUEUE_SECONDS in the overlays' ConfigMaps
MAX_INFLIGHT = {"cpu": 64, "gpu": 512}            # ATELIER_MAX_INFLIGHT, a safety cap behind the budget


def run(scale: str, profiles: list[Profile], startup_s: float) -> dict:
    results = {"scale": scale, "startup_s": startup_s, "profiles": {}}
    for profile in profiles:
        shape = SCALES[scale]
        peak = 1.5 * profile.peak_rate * (1.0 if scale == "full" else 0.2)
        trace = Trace(peak_per_s=round(peak, 1), **shape)
        entry = {"profile": asdict(profile), "trace": asdict(trace), "fleets": {}}
        for label, fleet in experiments(profile, trace, startup_s, scale).items():
            outcome = simulate(fleet, trace)
            summary = outcome.summary(profile.slo_s)
            summary["replicas"] = fleet.static_replicas if fleet.autoscaler is None else None
            summary["autoscaler"] = asdict(fleet.autoscaler) if fleet.autoscaler else None
            summary["max_queue_s"], summary["schedule_s"] = fleet.max_queue_s, fleet.schedule_s
            if label in PLOTTED and profile.name == "cpu":
                summary["timeline"] = [[round(value, 4) for value in row] for row in outcome.timeline]
            entry["fleets"][label] = summary
            log.info("%s %-34s good %.4f refused %.4f p95 %.3f s pod-hours %.1f max pods %d", profile.name, label,
                     summary["good_fraction_of_offered"], summary["refused_fraction"], summary["p95_s"],
                     summary["pod_hours"], summary["max_pods"])
        results["profiles"][profile.name] = entry
    return results


def table(results: dict) -> str:
    lines = []
    for name, entry in results["profiles"].items():
        profile, trace = entry["profile"], entry["trace"]
        lines += [f"**{name}** ({profile['request']}; SLO: answered within {profile['slo_s']:g} s; "
                  f"{trace['hours']:g} h, diurnal peak {trace['peak_per_s']:g} req/s, "
                  f"{trace['spike_factor']:g}x spike at {trace['spike_at_h']:g} h for {trace['spike_minutes']:g} min)", "",
                  "| fleet | good (within SLO, of offered) | SLO attainment (of answered) | refused (429) | p95 s "
                  "| pod-hours | max pods |", "|---|---|---|---|---|---|---|"]
        for label, s in entry["fleets"].items():
            pods = f"{s['replicas']} (static)" if s["replicas"] else str(s["max_pods"])
            lines.append(f"| {label} | {100 * s['good_fraction_of_offered']:.2f} % | "
                         f"{100 * s['slo_attainment_of_answered']:.2f} % | {100 * s['refused_fraction']:.2f} % | "
                         f"{s['p95_s']:.3f} | {s['pod_hours']:.1f} | {pods} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """The CPU fleet: a day of offered load and pods; the spike's pods; the spike's refusals per minute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = results["profiles"]["cpu"]
    fleets = entry["fleets"]
    # timeline columns: hour, offered req/s, ready pods, pods, refused, good, offered (per minute)
    auto = np.array(fleets["autoscaled (manifest targets)"]["timeline"])
    spike_h = entry["trace"]["spike_at_h"]
    spike = (auto[:, 0] >= spike_h - 0.15) & (auto[:, 0] <= spike_h + 0.4)
    figure, (day, zoom, refusals) = plt.subplots(1, 3, figsize=(16, 4.2))
    for axis, shown, title in ((day, slice(None), "a day"), (zoom, spike, "the 10x spike")):
        axis.plot(auto[shown, 0], auto[shown, 1], color="0.6", label="offered req/s")
        axis.set_xlabel("hour of the day")
        axis.set_ylabel("requests/s")
        axis.set_title(title)
        pods = axis.twinx()
        pods.step(auto[shown, 0], auto[shown, 3], where="post", color="tab:blue", label="pods (autoscaled)")
        pods.step(auto[shown, 0], auto[shown, 2], where="post", color="tab:blue", linestyle=":", label="ready pods")
        pods.axhline(fleets["static, sized for the spike"]["replicas"], color="tab:red", linestyle="--",
                     label="static fleet sized for the spike")
        pods.set_ylabel("pods")
        pods.set_ylim(bottom=0)
    handles, labels = [sum(pair, []) for pair in zip(day.get_legend_handles_labels(), pods.get_legend_handles_labels())]
    day.legend(handles, labels, loc="upper left", fontsize=7)
    for label, color in (("autoscaled (manifest targets)", "tab:blue"), ("cold node: +60 s image pull", "tab:purple"),
                         ("static, sized for the daily peak", "tab:green")):
        if "timeline" in fleets.get(label, {}):
            timeline = np.array(fleets[label]["timeline"])
            refusals.plot(timeline[spike, 0], 100 * timeline[spike, 4] / np.maximum(1, timeline[spike, 6]),
                          color=color, label=label)
    refusals.set_xlabel("hour of the day")
    refusals.set_ylabel("refused (429), % of the minute's requests")
    refusals.set_title("refusals around the spike")
    refusals.legend(fontsize=7)
    figure.suptitle("CPU fleet of 2-core pods (bench/capacity.py --scale full)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--out", type=Path, default=None, help="write capacity.json, capacity.md, capacity.png here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    profiles = [cpu_profile()] + ([gpu_profile()] if args.scale == "full" else [])
    results = run(args.scale, profiles, measured_startup_s())
    results["command"] = (f"flock /tmp/atelier-bench.lock .venv/bin/python -m bench.capacity --scale {args.scale}"
                          + (f" --out {args.out}" if args.out else ""))
    results["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.strip()
    results["run_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = table(results) + (f"\nCommand: `{results['command']}` · a deterministic simulation (seed 0; the inputs "
                             f"were measured on the devices their sources name) · commit `{results['commit']}` · "
                             f"{results['run_at']}\n")
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "capacity.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "capacity.md").write_text(text)
        plot(results, args.out / "capacity.png")


if __name__ == "__main__":
    main()
