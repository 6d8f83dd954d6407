#!/bin/bash
# Locust (loadtests.run) against bench/'s load generator on one served Atelier, alternating, 3 repetitions at
# concurrency 8 and 32: diffusion, 10 steps, guidance 3, one image, closed loop (Locust: --pace 1000, no think
# time). Serve with ATELIER_MAX_INFLIGHT=1024 as bench/ does, then:
#   flock /tmp/atelier-bench.lock docs/loadtests/bench-parity/run.sh http://127.0.0.1:3000 8001 /tmp/bench-parity
set -u
URL=$1; GRPC=$2; OUT=$3
ROOT=$(cd "$(dirname "$0")/../../.." && pwd); cd "$ROOT"; mkdir -p "$OUT"
for rep in 1 2 3; do
  for c in 8 32; do
    .venv/bin/python docs/loadtests/bench-parity/bench_point.py $URL $c bench >> $OUT/points.jsonl
    .venv/bin/python docs/loadtests/bench-parity/bench_point.py $URL $c loadtests >> $OUT/points.jsonl
    .venv/bin/python -m loadtests.run $URL --grpc-port $GRPC --tags json --mix diffusion=1 --steps 10 --pace 1000 \
      --users $c --spawn-rate $c --run-time 23s --out $OUT/locust-c$c-r$rep > $OUT/locust-c$c-r$rep.log 2>&1
  done
done
