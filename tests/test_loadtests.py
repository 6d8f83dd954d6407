"""The load tests (loadtests/): the real locustfile, headless, against a real served Atelier with its
default admission settings, and the SLO gate against crafted Locust CSVs. Locust (gevent, monkeypatching)
only ever runs in a subprocess; this process imports the gate and the shapes, which import no Locust.

    .venv/bin/python -m pytest tests/test_loadtests.py -q
"""

from __future__ import annotations

import ast
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from harness.serving import ROOT, AtelierServer
from loadtests import shapes, slo

PROTOCOLS = {"json", "openai", "oip-http", "oip-grpc"}
EVERY_USER_ONCE = "gan=1,diffusion=1,openai=1,oip-http=1,oip-grpc=1,batch=1"
STATS_HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
                "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
                "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]


def run_loadtests(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtests.run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.server
def test_smoke_every_protocol_against_the_real_server_passes_its_slo(tmp_path):
    # the server's own defaults, admission included: low concurrency must see no refusal
    with AtelierServer() as server:
        result = run_loadtests(server.url, "--grpc-port", str(server.grpc_port), "--users", "6",
                               "--spawn-rate", "6", "--run-time", "20s", "--mix", EVERY_USER_ONCE,
                               "--steps", "4,8", "--profile", "smoke", "--out", str(tmp_path))
    report = result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, report
    rows = list(csv.DictReader(open(tmp_path / "stats_stats.csv")))
    routes = [row for row in rows if row["Name"] != "Aggregated"]
    assert {row["Type"] for row in routes} == PROTOCOLS, report
    assert sum(int(row["Request Count"]) for row in routes if row["Type"] == "oip-grpc") > 0, report
    assert sum(int(row["Failure Count"]) for row in rows) == 0, report
    assert not [row["Name"] for row in routes if row["Name"].endswith(slo.REFUSED_SUFFIX)], report
    assert "SLO gate: passed" in result.stdout
    assert (tmp_path / "report.html").stat().st_size > 0 and (tmp_path / "summary.md").exists()


def write_locust_csvs(prefix: Path, rows: list[dict], failures: list[tuple[str, str, str, int]] = ()) -> Path:
    """The three CSVs Locust writes with `--csv prefix`, for the rows given (times in ms)."""
    def stats_row(row: dict) -> dict:
        count, p95, p99 = row["count"], row["p95_ms"], row["p99_ms"]
        return {"Type": row["type"], "Name": row["name"], "Request Count": count,
                "Failure Count": row.get("failures", 0),
                "Median Response Time": p95 // 2, "Average Response Time": p95 / 2, "Min Response Time": 1,
                "Max Response Time": p99, "Average Content Size": 3000, "Requests/s": count / 60, "Failures/s": 0,
                "50%": p95 // 2, "66%": p95, "75%": p95, "80%": p95, "90%": p95, "95%": p95, "98%": p99,
                "99%": p99, "99.9%": p99, "99.99%": p99, "100%": p99}

    total = sum(row["count"] for row in rows)
    aggregated = {"type": "", "name": "Aggregated", "count": total, "p95_ms": 100, "p99_ms": 100,
                  "failures": sum(row.get("failures", 0) for row in rows)}
    with open(f"{prefix}_stats.csv", "w", newline="") as stats:
        writer = csv.DictWriter(stats, STATS_HEADER)
        writer.writeheader()
        writer.writerows(stats_row(row) for row in [*rows, aggregated])
    with open(f"{prefix}_failures.csv", "w", newline="") as failed:
        writer = csv.writer(failed)
        writer.writerow(["Method", "Name", "Error", "Occurrences", "First Seen", "Last Seen"])
        writer.writerows([method, name, error, count, 0, 0] for method, name, error, count in failures)
    Path(f"{prefix}_exceptions.csv").write_text("Count,Message,Traceback,Nodes\n")
    return prefix


HEALTHY = [{"type": "json", "name": "/v1/generate dcgan n=4", "count": 600, "p95_ms": 120, "p99_ms": 200},
           {"type": "oip-grpc", "name": "ModelInfer diffusion", "count": 300, "p95_ms": 900, "p99_ms": 1300}]


def test_gate_fails_naming_the_route_and_the_figure_it_missed(tmp_path):
    slow = {"type": "json", "name": "/v1/generate diffusion", "count": 300, "p95_ms": 1800, "p99_ms": 2400}
    prefix = write_locust_csvs(tmp_path / "stats", [*HEALTHY, slow])
    result = run_loadtests("--check", str(prefix), "--profile", "default", timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISS json /v1/generate diffusion: p95 latency 1.80 s, target <= 1.50 s" in result.stdout
    assert "SLO gate: FAILED (1 of" in result.stdout  # its p99, 2.40 s, is inside its 2.5 s target


def test_gate_passes_a_run_inside_every_target(tmp_path):
    prefix = write_locust_csvs(tmp_path / "stats", HEALTHY)
    result = run_loadtests("--check", str(prefix), "--profile", "default", timeout=60)
    assert result.returncode == 0 and "SLO gate: passed" in result.stdout, result.stdout + result.stderr


def test_refusals_count_apart_from_errors_and_from_admitted_latency(tmp_path):
    refused = {"type": "json", "name": "/v1/generate dcgan n=4 [refused]", "count": 400, "p95_ms": 5, "p99_ms": 9}
    run = slo.read_run(write_locust_csvs(tmp_path / "stats", [*HEALTHY, refused]))
    route = next(r for r in run.routes if r.route == "json /v1/generate dcgan n=4")
    assert (route.requests, route.refused, route.failures, route.p95_s) == (600, 400, 0, 0.12)
    checks = {(c.route, c.figure): c for c in slo.evaluate(run, slo.load_profile("overload"))}
    assert checks["json /v1/generate dcgan n=4", "refused ratio"].measured == "0.400 (400/1000)"
    assert checks["json /v1/generate dcgan n=4", "error ratio"].ok
    assert all(c.ok for c in checks.values())  # shed, nothing failed: what an overload run must show


def test_overload_gate_fails_on_a_server_error_and_on_a_load_that_was_never_shed(tmp_path):
    failing = [*HEALTHY[:1], {**HEALTHY[1], "failures": 2}]
    failures = [("oip-grpc", "ModelInfer diffusion", "RuntimeError('gRPC UNAVAILABLE: draining')", 2)]
    run = slo.read_run(write_locust_csvs(tmp_path / "stats", failing, failures))
    missed = {(c.route, c.figure) for c in slo.evaluate(run, slo.load_profile("overload")) if not c.ok}
    assert missed == {("oip-grpc ModelInfer diffusion", "error ratio"),
                      ("all routes", "server errors (5xx, no answer)"),
                      ("all routes", "refused ratio (load past capacity)")}


def test_latency_patterns_treat_only_the_star_as_a_wildcard():
    assert slo.matches("json /v1/generate diffusion n=8 [batch]", "* [batch]*")
    assert not slo.matches("json /v1/generate diffusion b", "* [batch]*")  # not a character class
    assert slo.matches("oip-grpc ModelInfer dcgan [interactive]", "* *dcgan*")


def test_every_slo_profile_loads_and_covers_every_route():
    for name in ("default", "overload", "smoke"):
        profile = slo.load_profile(name)
        assert profile.latency[-1].pattern == "*", name  # no route goes unjudged


def test_spike_holds_the_base_load_then_four_times_it_then_recovers():
    users = [shapes.spike(t, 4, 2.0, 100)[0] for t in (0, 29, 30, 54, 56, 99)]
    assert users == [4, 4, 16, 16, 4, 4] and shapes.spike(100, 4, 2.0, 100) is None


def test_ramp_climbs_one_user_at_a_time_to_the_target_and_holds():
    users = [shapes.ramp(t, 5, 1.0, 100)[0] for t in range(100)]
    assert users[0] == 1 and users[80:] == [5] * 20 and all(b - a in (0, 1) for a, b in zip(users, users[1:]))


def test_load_tests_hold_no_address_of_their_own():
    """Traffic goes only to the URL given on the command line: no URL or host literal in the code."""
    for path in (ROOT / "loadtests").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node)}
        literals = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                    and isinstance(node.value, str) and id(node) not in docstrings]
        assert not [s for s in literals if "://" in s or "localhost" in s or "127.0.0.1" in s], path
