"""`python -m bench {quick,full,steps}`: run the suite, keep the raw results, write the report.

- full  (`make bench`, ~25 min): every comparison at concurrency 1/8/32/64 plus the tuning sweep;
  writes docs/PERFORMANCE.md, docs/perf/*.png and docs/perf/summary.json.
- quick (`make bench-quick`, <= 5 min): concurrency 32 only, no tuning; writes the same files under
  bench/results/quick/ so a quick run never replaces the committed report.
- steps (`make bench-steps`, <= 4 min): step-level (each queue order) vs request-level diffusion batching, on
  this CPU and on the simulated accelerator, only; logs
  img/s and p95 of both modes and their ratio.
- smoke (tests/test_bench.py, ~1 min): the quick suite cut to one short repetition, to prove the
  harness works end to end; writes under bench/results/smoke/ (or --docs). Its numbers mean nothing.
Raw results (every repetition, with batch histograms) go to bench/results/<scale>-<UTC time>.json.

    .venv/bin/python -m bench quick --docs /tmp/bench-docs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("onnxruntime", "bentoml", "torch", "numpy", "fastapi", "uvicorn", "httpx")

log = logging.getLogger("bench")


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    short = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{short} + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else short


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_meta(scale: str) -> dict:
    from bench import suite

    return {
        "scale": scale, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
        "cpu": cpu_name(), "cores": os.cpu_count(), "os": platform.platform(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "python": platform.python_version(), "versions": {name: version(name) for name in PACKAGES},
        "diffusion_steps": suite.DIFFUSION_STEPS, "mixed_steps": list(suite.MIXED_STEPS),
        "guidance": suite.GUIDANCE, "offered_fraction": suite.OFFERED_FRACTION,
    }


def save_raw(raw: dict, scale: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{scale}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(raw, indent=1) + "\n")
    return path


def report_steps(raw: dict) -> None:
    from bench.summary import summarise_mixed, summarise_simulated

    mixed = summarise_mixed(raw["mixed"])
    for mode, stats in mixed["modes"].items():
        log.info("%-8s-level: %.2f img/s (%.2f–%.2f), p95 %.2f s (%.2f–%.2f)", mode,
                 stats["images_per_s"]["median"], stats["images_per_s"]["min"], stats["images_per_s"]["max"],
                 stats["p95_s"]["median"], stats["p95_s"]["min"], stats["p95_s"]["max"])
    for mode, ratios in mixed["over_request"].items():
        ratio, p95 = ratios["throughput"], ratios["p95"]
        log.info("%s ÷ request: throughput %.2f× (%.2f–%.2f), p95 %.2f× (%.2f–%.2f); offered %.2f req/s, "
                 "%d requests per run, %d repetitions", mode, ratio["median"], ratio["min"], ratio["max"],
                 p95["median"], p95["min"], p95["max"], mixed["offered_per_s"], mixed["requests_per_run"], ratio["n"])
    sim = summarise_simulated(raw.get("simulated", {}))
    if sim:
        cost, ratio, p95 = sim["cost"], sim["step_over_request"]["throughput"], sim["step_over_request"]["p95"]
        log.info("SIMULATED accelerator (%.2f ms + %.4f ms/row = the H100 fit %.3f ms + %.5f ms/row x%g): step ÷ "
                 "request throughput %.2f× (%.2f–%.2f), p95 %.2f× (%.2f–%.2f)", cost["fixed_ms"], cost["per_row_ms"],
                 cost["gpu_fixed_ms"], cost["gpu_per_row_ms"], cost["time_scale"], ratio["median"], ratio["min"],
                 ratio["max"], p95["median"], p95["min"], p95["max"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("scale", choices=("quick", "full", "steps", "smoke"))
    parser.add_argument("--docs", type=Path, help="where PERFORMANCE.md and perf/ go "
                        "(default: docs/ for full, bench/results/quick/ for quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from bench import report, suite, summary

    meta = machine_meta(args.scale)
    raw = suite.run_steps() if args.scale == "steps" else suite.run(suite.SCALES[args.scale])
    raw["meta"] = {**meta, "wall_s": raw["wall_s"], "loadavg_start": raw["loadavg"]["start"],
                   "loadavg_end": raw["loadavg"]["end"]}
    path = save_raw(raw, args.scale)
    raw["meta"]["raw_file"] = path.name
    log.info("raw results: %s (%.0f s)", path.relative_to(ROOT), raw["wall_s"])
    if args.scale == "steps":
        report_steps(raw)
        return 0
    docs = args.docs or (ROOT / "docs" if args.scale == "full" else RESULTS / args.scale)
    result = json.loads(json.dumps(summary.summarise(raw)))  # string keys, as a reader of the JSON sees them
    page = report.write(result, docs)
    for target in result["targets"]:
        log.info("%-55s %s  median %.2f (%.2f–%.2f)", target["name"], "met   " if target["met"] else "MISSED",
                 target["ratio"]["median"], target["ratio"]["min"], target["ratio"]["max"])
    log.info("report: %s", page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
