"""summary.md for a run: what ran, where, when and on what; the load over time (admitted, refused and
failed requests per second, from Locust's full stats history); Locust's stats and the SLO gate's table.

    .venv/bin/python -c "from loadtests.report import timeline; print(timeline('loadtests/reports/<run>/stats'))"
"""

from __future__ import annotations

import csv
import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

from loadtests.workload import REFUSED_SUFFIX

ROOT = Path(__file__).resolve().parent.parent


def timeline(prefix: str | Path, every_s: int = 30) -> str:
    """A markdown table, one line per `every_s` seconds: most users, and admitted / refused / failed requests per
    second in that window (differences of Locust's cumulative counts per row, so nothing is averaged away)."""
    totals: dict[int, dict[str, list[int]]] = {}  # second -> kind -> [requests, failures]
    users: dict[int, int] = {}
    for row in csv.DictReader(open(f"{prefix}_stats_history.csv", newline="")):
        second = int(row["Timestamp"])
        users[second] = int(row["User Count"])
        if row["Name"] == "Aggregated":
            continue
        kind = "refused" if row["Name"].endswith(REFUSED_SUFFIX) else "admitted"
        counts = totals.setdefault(second, {}).setdefault(kind, [0, 0])
        counts[0] += int(row["Total Request Count"])
        counts[1] += int(row["Total Failure Count"])
    if not totals:
        return "(no per-route history)"
    seconds = sorted(totals)
    start, lines = seconds[0], ["| from s | users (most) | admitted, ok /s | refused /s | failed /s |", "|---|---|---|---|---|"]
    previous = {"admitted": [0, 0], "refused": [0, 0]}
    for at in range(start + every_s, seconds[-1] + every_s, every_s):
        second = max(s for s in seconds if s <= at)
        now = {kind: totals[second].get(kind, previous[kind]) for kind in previous}
        admitted = now["admitted"][0] - previous["admitted"][0]
        failed = now["admitted"][1] - previous["admitted"][1]
        refused = now["refused"][0] - previous["refused"][0]
        window = max(1, second - (at - every_s))
        peak_users = max(n for s, n in users.items() if at - every_s < s <= at)
        lines.append(f"| {at - every_s - start} | {peak_users} | {(admitted - failed) / window:.1f} | "
                     f"{refused / window:.1f} | {failed / window:.1f} |")
        previous = now
    return "\n".join(lines)


def write_summary(out: Path, what: dict[str, str], locust_command: list[str], gate_table: str) -> Path:
    """out/summary.md; `what` holds the lines of the header (command, target, shape ...), in order."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else platform.processor()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    header = {**what, "Locust": f"`{' '.join(locust_command)}`",
              "load generator": f"{cpu}, {os.cpu_count()} cores, {platform.platform()}, Python "
                                f"{platform.python_version()}, locust {version('locust')}; loadtests at commit {commit}"}
    path = out / "summary.md"
    path.write_text("\n".join([
        f"# Load test {what.get('date', '')}", "",
        *[f"- {key}: {value}" for key, value in header.items() if key != "date"], "",
        "## Load over time", "", timeline(out / "stats"), "",
        "## Locust stats (stats_stats.csv; times in ms)", "", "```", (out / "stats_stats.csv").read_text(), "```", "",
        "## SLO gate", "", "```", gate_table, "```", ""]))
    return path
