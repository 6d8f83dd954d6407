"""One dcgan `generate` run, the committed graph against an earlier commit's, at batch 1 and 32, with
the service's session options (2 intra-op threads) and bench.ceiling's timing: what a model change
costs per run.

    .venv/bin/python -m bench.generator_cost --old-commit ccedaab
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import onnxruntime as ort

from bench import ceiling
from service.config import Config
from service.registry import session_options

ROOT = Path(__file__).resolve().parent.parent
FUNCTION = "dcgan.generate"
GRAPH = ceiling.GRAPHS[FUNCTION]


def median_ms(path: Path, batch: int, seconds: float) -> float:
    session = ort.InferenceSession(str(path), session_options(Config(intra_op_threads=2)),
                                   providers=["CPUExecutionProvider"])
    return 1000.0 * ceiling.run_seconds(session, FUNCTION, batch, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old-commit", required=True)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per graph and batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old.onnx"
        old.write_bytes(subprocess.run(["git", "show", f"{args.old_commit}:models/{GRAPH}"], cwd=ROOT, check=True,
                                       capture_output=True).stdout)
        for batch in (1, 32):
            before, after = median_ms(old, batch, args.seconds), median_ms(ceiling.MODELS_DIR / GRAPH, batch,
                                                                          args.seconds)
            print(f"batch {batch}: {args.old_commit} {before:.2f} ms, committed {after:.2f} ms, "
                  f"ratio {after / before:.2f}")


if __name__ == "__main__":
    main()
