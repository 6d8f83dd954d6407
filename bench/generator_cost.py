"""One dcgan `generate` run in onnxruntime, the committed graph against an earlier commit's, at batch 1
and 32 (2 intra-op threads, spinning off as the service runs it): what a model change costs per run.

    .venv/bin/python -m bench.generator_cost --old-commit ccedaab
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
GRAPH = "models/dcgan/generator.onnx"


def median_ms(path: Path, batch: int, repeats: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"z": np.random.default_rng(0).standard_normal((batch, 128), np.float32),
            "class_id": np.zeros(batch, np.int64)}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return 1000.0 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old-commit", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old.onnx"
        old.write_bytes(subprocess.run(["git", "show", f"{args.old_commit}:{GRAPH}"], cwd=ROOT, check=True,
                                       capture_output=True).stdout)
        for batch, repeats in ((1, 200), (32, 40)):
            before, after = median_ms(old, batch, repeats), median_ms(ROOT / GRAPH, batch, repeats)
            print(f"batch {batch}: {args.old_commit} {before:.2f} ms, committed {after:.2f} ms, "
                  f"ratio {after / before:.2f}")


if __name__ == "__main__":
    main()
