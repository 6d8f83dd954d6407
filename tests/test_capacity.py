"""bench/capacity.py: the HPA algorithm it simulates, its pod model, a small-scale run, and the targets it
shares with the manifests in k8s/.

    .venv/bin/python -m pytest -q tests/test_capacity.py
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections import deque
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bench.capacity import (ADMISSION_BUDGET_S, MANIFEST_TARGETS, MAX_INFLIGHT, Autoscaler, Fleet, Pod, Trace, cpu_profile,
                            experiments, gpu_profile, hpa_desired, hpa_stabilised, measured_startup_s, run, simulate)

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ the HPA's algorithm

def test_hpa_keeps_the_replica_count_within_the_tolerance():
    autoscaler = Autoscaler(pending_work_target_s=0.4, predicted_wait_target_s=None)
    assert hpa_desired(autoscaler, current=4, pending_sum=4 * 0.4 * 1.09, wait_sum=0) == 4
    assert hpa_desired(autoscaler, current=4, pending_sum=4 * 0.4 * 0.91, wait_sum=0) == 4


def test_hpa_asks_for_ceil_of_the_total_over_the_per_pod_target():
    autoscaler = Autoscaler(pending_work_target_s=0.4, predicted_wait_target_s=None)
    assert hpa_desired(autoscaler, current=4, pending_sum=4.1, wait_sum=0) == 11
    assert hpa_desired(autoscaler, current=4, pending_sum=0.0, wait_sum=0) == 0


def test_hpa_takes_the_larger_of_the_two_triggers():
    autoscaler = Autoscaler(pending_work_target_s=0.4, predicted_wait_target_s=0.25)
    assert hpa_desired(autoscaler, current=2, pending_sum=0.8, wait_sum=2.5) == 10
    assert hpa_desired(autoscaler, current=2, pending_sum=4.0, wait_sum=0.0) == 10


def test_scale_down_holds_the_highest_recommendation_of_the_window():
    autoscaler = Autoscaler(min_replicas=1)
    history = deque([(0.0, 10), (100.0, 6)])
    assert hpa_stabilised(autoscaler, current=10, desired=3, history=history, now=200.0) == 10
    assert hpa_stabilised(autoscaler, current=10, desired=3, history=history, now=350.0) == 6
    assert hpa_stabilised(autoscaler, current=6, desired=3, history=history, now=500.0) == 3


def test_scale_up_is_immediate_but_limited_to_double_or_four_more_per_period():
    autoscaler = Autoscaler(min_replicas=1, max_replicas=100)
    assert hpa_stabilised(autoscaler, current=2, desired=50, history=deque(), now=0.0) == 6
    assert hpa_stabilised(autoscaler, current=10, desired=50, history=deque(), now=0.0) == 20
    assert hpa_stabilised(autoscaler, current=10, desired=12, history=deque(), now=0.0) == 12


def test_replicas_stay_within_min_and_max():
    autoscaler = Autoscaler(min_replicas=2, max_replicas=5)
    assert hpa_stabilised(autoscaler, current=4, desired=9, history=deque(), now=0.0) == 5
    assert hpa_stabilised(autoscaler, current=2, desired=0, history=deque(), now=0.0) == 2


# ---------------------------------------------------------------------------------------- the pod

def test_a_lone_request_takes_the_curves_concurrency_one_time():
    profile = cpu_profile()
    pod = Pod(profile, created_at=0.0, ready_at=0.0)
    pod.admit(0.0, 0.0)
    assert pod.next_completion() == pytest.approx(1 / profile.rate(1))


def test_requests_in_a_batch_share_its_throughput_and_finish_in_arrival_order():
    profile = cpu_profile()
    pod = Pod(profile, created_at=0.0, ready_at=0.0)
    for _ in range(8):
        pod.admit(0.0, 0.0)
    first = pod.next_completion()
    assert first == pytest.approx(8 / profile.rate(8))
    assert pod.complete(first) == 0.0 and len(pod.batch) == 7


def test_requests_beyond_the_batch_wait_for_a_slot():
    profile = cpu_profile()
    pod = Pod(profile, created_at=0.0, ready_at=0.0)
    for _ in range(profile.batch_slots + 1):
        pod.admit(0.0, 0.0)
    assert len(pod.batch) == profile.batch_slots and len(pod.waiting) == 1


def test_pending_work_is_the_admitted_work_at_the_current_batch_throughput():
    profile = cpu_profile()
    pod = Pod(profile, created_at=0.0, ready_at=0.0)
    assert pod.pending_work_s(0.0) == 0.0
    for _ in range(8):
        pod.admit(0.0, 0.0)
    assert pod.pending_work_s(0.0) == pytest.approx(8 / profile.rate(8))
    for _ in range(30):
        pod.admit(0.0, 0.0)
    assert pod.pending_work_s(0.0) == pytest.approx(38 / profile.peak_rate)


def test_pending_work_falls_as_the_batch_progresses():
    profile = cpu_profile()
    pod = Pod(profile, created_at=0.0, ready_at=0.0)
    pod.admit(0.0, 0.0)
    halfway = 0.5 / profile.rate(1)
    assert pod.pending_work_s(halfway) == pytest.approx(halfway)


# ------------------------------------------------------------------------------ a small-scale run

@pytest.fixture(scope="module")
def small_run():
    return run("small", [cpu_profile()], measured_startup_s())


def test_every_offered_request_is_answered_or_refused(small_run):
    for fleet in small_run["profiles"]["cpu"]["fleets"].values():
        assert fleet["answered"] + fleet["refused"] == fleet["offered"] > 0


def test_the_autoscaled_fleet_grows_for_the_spike_and_costs_less_than_a_static_one_sized_for_it(small_run):
    fleets = small_run["profiles"]["cpu"]["fleets"]
    autoscaled, for_spike = fleets["autoscaled (manifest targets)"], fleets["static, sized for the spike"]
    assert autoscaled["max_pods"] > MANIFEST_TARGETS["cpu"].min_replicas
    assert autoscaled["pod_hours"] < for_spike["pod_hours"]
    assert autoscaled["good_fraction_of_offered"] > fleets["static, sized for the daily peak"]["good_fraction_of_offered"]


def test_the_simulation_depends_on_its_seed_only():
    profile = cpu_profile()
    trace = Trace(hours=0.25, peak_per_s=40.0, spike_at_h=0.1, spike_minutes=2.0, trough_fraction=1.0, seed=3)
    fleet = Fleet(profile, MANIFEST_TARGETS["cpu"])
    first, second = simulate(fleet, trace), simulate(fleet, trace)
    assert first.summary(1.0) == second.summary(1.0)
    assert simulate(fleet, replace(trace, seed=4)).offered != first.offered


def test_the_full_scale_compares_each_autoscaler_choice_one_at_a_time():
    profile = cpu_profile()
    fleets = experiments(profile, Trace(hours=1.0), measured_startup_s(), "full")
    chosen = fleets["autoscaled (manifest targets)"]
    assert fleets["pending-work trigger only"].autoscaler.predicted_wait_target_s is None
    assert fleets["predicted-wait target x2"].autoscaler.predicted_wait_target_s == 2 * chosen.autoscaler.predicted_wait_target_s
    assert fleets["admission budget x0.5"].max_queue_s == chosen.max_queue_s / 2 == ADMISSION_BUDGET_S["cpu"] / 2
    assert math.isclose(fleets["cold node: +60 s image pull"].schedule_s - fleets["autoscaled (manifest targets)"].schedule_s, 60)
    assert gpu_profile().curve[0][0] == 1


# ------------------------------------------------------------------------- shared with the manifests

def rendered(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests cannot be rendered here")
    text = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_manifests_carry_the_targets_and_timings_the_simulation_used(overlay):
    docs = rendered(overlay)
    [scaled] = [doc["spec"] for doc in docs if doc["kind"] == "ScaledObject"]
    [config] = [doc["data"] for doc in docs if doc["kind"] == "ConfigMap"]
    [monitor] = [doc["spec"] for doc in docs if doc["kind"] == "ServiceMonitor"]
    [deployment] = [doc["spec"] for doc in docs if doc["kind"] == "Deployment"]
    simulated = MANIFEST_TARGETS[overlay]
    assert [float(t["metadata"]["threshold"]) for t in scaled["triggers"]] == [
        simulated.predicted_wait_target_s, simulated.pending_work_target_s]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (simulated.min_replicas, simulated.max_replicas)
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == simulated.scale_up_window_s
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == simulated.scale_down_window_s
    up = {p["type"]: p for p in behavior["scaleUp"]["policies"]}
    assert (up["Percent"]["value"], up["Pods"]["value"]) == (simulated.scale_up_percent, simulated.scale_up_pods)
    assert all(p["periodSeconds"] == simulated.sync_s for p in behavior["scaleUp"]["policies"] + behavior["scaleDown"]["policies"])
    assert [p["value"] for p in behavior["scaleDown"]["policies"]] == [simulated.scale_down_percent]
    assert float(config["ATELIER_MAX_QUEUE_SECONDS"]) == ADMISSION_BUDGET_S[overlay]
    assert int(config["ATELIER_MAX_INFLIGHT"]) == MAX_INFLIGHT[overlay]
    assert monitor["endpoints"][0]["interval"] == f"{Fleet(cpu_profile(), None).scrape_s:g}s"
    startup = deployment["template"]["spec"]["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] == Fleet(cpu_profile(), None).probe_period_s
