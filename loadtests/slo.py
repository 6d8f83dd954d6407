"""The SLO gate: Locust's CSV stats against a profile of loadtests/slo.yaml, as a table of every check
and a verdict. Plain Python (csv, yaml): no Locust, so tests import it without gevent's patching.

What it reads, from a `--csv PREFIX` run: PREFIX_stats.csv (per row: requests, failures, percentiles,
the aggregated requests/s), PREFIX_failures.csv (each failure message and its count) and
PREFIX_exceptions.csv (errors in the user code itself). Rows named `... [refused]` are admission's
refusals (see locustfile.py); they count apart from errors and from the admitted requests' latency.

    .venv/bin/python -m loadtests.run check loadtests/reports/<run>/stats --profile default
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from loadtests.workload import REFUSED_SUFFIX

SLO_FILE = Path(__file__).resolve().parent / "slo.yaml"
SLO_VERSION = 1
# The server's fault, not the client's: HTTP 5xx, no answer at all (HTTP 0), and the gRPC codes that mean
# the same (the failure messages are written by locustfile.py and grpc_client.py).
SERVER_ERROR = re.compile(r"HTTP (5\d\d|0)\b"
                          r"|gRPC (INTERNAL|UNKNOWN|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS|UNIMPLEMENTED)\b")


@dataclass(frozen=True)
class LatencyTarget:
    pattern: str  # over "<protocol> <name>", `*` matching anything: "json /v1/generate dcgan*", "* [batch]*"
    p95_s: float
    p99_s: float


@dataclass(frozen=True)
class Profile:
    name: str
    source: str  # the SLO file's name
    description: str
    error_ratio_max: float  # failures (not refusals) / all requests, per route
    refused_ratio_max: float  # admission refusals / all requests, per route
    refused_ratio_min: float  # overload runs: the load must have been shed at all
    server_errors_max: int  # 5xx, no answer, gRPC server-side codes, over the whole run
    throughput_min_rps: float  # admitted, successful answers per second over the run
    latency: tuple[LatencyTarget, ...]  # first matching pattern wins


@dataclass(frozen=True)
class RouteStats:
    route: str  # "<protocol> <name>" without the refused suffix
    requests: int  # admitted requests (answered, or failed)
    failures: int
    refused: int
    p95_s: float | None  # None without admitted requests
    p99_s: float | None

    @property
    def offered(self) -> int:
        return self.requests + self.refused


@dataclass(frozen=True)
class RunStats:
    routes: tuple[RouteStats, ...]
    duration_s: float
    failure_messages: tuple[tuple[str, str, int], ...]  # (route, message, occurrences)
    exceptions: int  # raised in user code: the load itself broke

    @property
    def server_errors(self) -> int:
        return sum(count for _, message, count in self.failure_messages if SERVER_ERROR.search(message))

    @property
    def admitted_ok_per_s(self) -> float:
        return sum(r.requests - r.failures for r in self.routes) / self.duration_s if self.duration_s else 0.0


@dataclass(frozen=True)
class Check:
    route: str  # a route, or "all routes"
    figure: str  # "p95 latency", "error ratio", ...
    measured: str
    target: str
    ok: bool


def load_profile(name: str, path: Path = SLO_FILE) -> Profile:
    document = yaml.safe_load(path.read_text())
    if document.get("version") != SLO_VERSION:
        raise ValueError(f"{path}: version {document.get('version')!r}, this gate reads version {SLO_VERSION}")
    profiles = document["profiles"]
    if name not in profiles:
        raise ValueError(f"{path}: no profile {name!r}; profiles: {', '.join(profiles)}")
    entry = profiles[name]
    return Profile(name=name, source=path.name, description=entry.get("description", "").strip(),
                   error_ratio_max=float(entry["error_ratio_max"]),
                   refused_ratio_max=float(entry["refused_ratio_max"]),
                   refused_ratio_min=float(entry.get("refused_ratio_min", 0.0)),
                   server_errors_max=int(entry["server_errors_max"]),
                   throughput_min_rps=float(entry.get("throughput_min_rps", 0.0)),
                   latency=tuple(LatencyTarget(pattern, float(t["p95_s"]), float(t["p99_s"]))
                                 for pattern, t in entry["latency"].items()))


def read_run(prefix: str | Path) -> RunStats:
    """The stats of a Locust run written with `--csv PREFIX`."""
    rows = list(csv.DictReader(open(f"{prefix}_stats.csv", newline="")))
    aggregated = next(r for r in rows if r["Name"] == "Aggregated")
    per_route: dict[str, dict] = {}
    for row in rows:
        if row["Name"] == "Aggregated":
            continue
        name = row["Name"].removesuffix(REFUSED_SUFFIX)
        entry = per_route.setdefault(f"{row['Type']} {name}", {"requests": 0, "failures": 0, "refused": 0,
                                                              "p95_s": None, "p99_s": None})
        if row["Name"].endswith(REFUSED_SUFFIX):
            entry["refused"] += int(row["Request Count"])
        else:
            entry.update(requests=int(row["Request Count"]), failures=int(row["Failure Count"]),
                         p95_s=seconds(row["95%"]), p99_s=seconds(row["99%"]))
    routes = tuple(RouteStats(route, **figures) for route, figures in sorted(per_route.items()))
    total, rate = int(aggregated["Request Count"]), float(aggregated["Requests/s"])
    failures = tuple((f"{r['Method']} {r['Name']}", r["Error"], int(r["Occurrences"]))
                     for r in csv.DictReader(open(f"{prefix}_failures.csv", newline="")))
    exceptions_path = Path(f"{prefix}_exceptions.csv")
    exceptions = sum(int(r["Count"]) for r in csv.DictReader(open(exceptions_path, newline=""))) \
        if exceptions_path.exists() else 0
    return RunStats(routes, total / rate if rate else 0.0, failures, exceptions)


def seconds(milliseconds: str) -> float | None:
    return None if milliseconds in ("", "N/A") else float(milliseconds) / 1000


def evaluate(run: RunStats, profile: Profile) -> list[Check]:
    """Every check of `profile` on `run`, passed or not, in table order: per route, then the whole run."""
    checks = []
    for route in run.routes:
        target = next((t for t in profile.latency if matches(route.route, t.pattern)), None)
        if target and route.requests:
            checks += [Check(route.route, "p95 latency", f"{route.p95_s:.2f} s", f"<= {target.p95_s:.2f} s",
                             route.p95_s <= target.p95_s),
                       Check(route.route, "p99 latency", f"{route.p99_s:.2f} s", f"<= {target.p99_s:.2f} s",
                             route.p99_s <= target.p99_s)]
        checks += [ratio_check(route.route, "error ratio", route.failures, route.offered, profile.error_ratio_max),
                   ratio_check(route.route, "refused ratio", route.refused, route.offered, profile.refused_ratio_max)]
    offered, refused = sum(r.offered for r in run.routes), sum(r.refused for r in run.routes)
    checks += [
        Check("all routes", "server errors (5xx, no answer)", str(run.server_errors),
              f"<= {profile.server_errors_max}", run.server_errors <= profile.server_errors_max),
        Check("all routes", "errors in the load's own code", str(run.exceptions), "0", run.exceptions == 0),
        Check("all routes", "throughput (admitted, ok)", f"{run.admitted_ok_per_s:.2f} req/s",
              f">= {profile.throughput_min_rps:.2f} req/s", run.admitted_ok_per_s >= profile.throughput_min_rps),
    ]
    if profile.refused_ratio_min:
        share = refused / offered if offered else 0.0
        checks.append(Check("all routes", "refused ratio (load past capacity)", f"{share:.3f}",
                            f">= {profile.refused_ratio_min:.3f}", share >= profile.refused_ratio_min))
    return checks


def matches(route: str, pattern: str) -> bool:
    """`*` matches any text; everything else, brackets included, only itself (routes hold "[batch]")."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), route) is not None


def ratio_check(route: str, figure: str, part: int, whole: int, limit: float) -> Check:
    share = part / whole if whole else 0.0
    return Check(route, figure, f"{share:.3f} ({part}/{whole})", f"<= {limit:.3f}", share <= limit)


def render(checks: list[Check], profile: Profile, run: RunStats) -> str:
    """The table a person reads: every check, then each miss spelled out with its route and figure."""
    width = max([len(c.route) for c in checks] + [5])
    lines = [f"SLO profile '{profile.name}' ({profile.source} v{SLO_VERSION}): {profile.description}",
             f"run: {run.duration_s:.0f} s, {sum(r.offered for r in run.routes)} requests",
             f"{'route':<{width}}  {'figure':<34} {'measured':>18}  {'target':<16} verdict"]
    lines += [f"{c.route:<{width}}  {c.figure:<34} {c.measured:>18}  {c.target:<16} {'ok' if c.ok else 'MISS'}"
              for c in checks]
    misses = [c for c in checks if not c.ok]
    lines.append("")
    lines += [f"MISS {c.route}: {c.figure} {c.measured}, target {c.target}" for c in misses]
    lines += [f"  failure on {route}: {message} x{count}" for route, message, count in run.failure_messages][:20]
    lines.append(f"SLO gate: {'FAILED' if misses else 'passed'} ({len(misses)} of {len(checks)} checks missed)")
    return "\n".join(lines)
