"""One closed-loop point with bench/'s own load generator (bench/load.py, bench/suite.py's diffusion body, or
the load tests' diffusion body at 10 steps): prints one JSON line with img/s, p50, p95, p99.

    .venv/bin/python docs/loadtests/bench-parity/bench_point.py http://127.0.0.1:3000 8 bench
"""
import asyncio
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench import load, suite  # noqa: E402
from loadtests import workload  # noqa: E402

url, concurrency, body_kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(0)
body = suite.diffusion_body if body_kind == "bench" else (lambda i: workload.diffusion_body(rng, (10,)))
result = asyncio.run(load.closed_loop(url + "/v1/generate", body, concurrency, duration_s=20.0, warmup_s=3.0))
print(json.dumps({"tool": "bench/load.py", "body": body_kind, "c": concurrency, **result.summary()}))
