"""Pod start-up time: seconds from launching `bentoml serve service:Atelier` to its first 200 on /readyz.

This is the start-up a Kubernetes pod pays after its container starts (models sha256-verified, sessions
opened, every function warmed up): bench/capacity.py's autoscaler waits this long for a new pod, and
k8s/base/deployment.yaml's startupProbe allows many times it. Image pull and scheduling are not in it.
Each repetition is a fresh server with an empty BentoML home (harness/serving.py), polled every 0.3 s.

    flock /tmp/atelier-bench.lock .venv/bin/python -m bench.startup --repetitions 5 --out docs/deploy/startup.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.serving import ROOT, AtelierServer

log = logging.getLogger("bench.startup")


def time_to_ready(env: dict[str, str]) -> float:
    server = AtelierServer(env=env, ready_timeout=300.0)
    started = time.monotonic()
    server.start()
    ready = time.monotonic() - started
    server.stop()
    server.home.cleanup()
    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seconds = []
    for repetition in range(args.repetitions):
        seconds.append(time_to_ready({"ATELIER_PROVIDERS": "cpu"}))
        log.info("repetition %d: ready after %.2f s", repetition + 1, seconds[-1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    result = {"seconds": [round(s, 2) for s in seconds], "median_s": round(statistics.median(seconds), 2),
              "max_s": round(max(seconds), 2), "repetitions": args.repetitions,
              "device": f"CPU ({os.cpu_count()} cores), {platform.platform()}", "commit": commit,
              "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "command": "flock /tmp/atelier-bench.lock .venv/bin/python -m bench.startup --repetitions "
                         f"{args.repetitions} --out docs/deploy/startup.json"}
    log.info("median %.2f s, max %.2f s", result["median_s"], result["max_s"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
