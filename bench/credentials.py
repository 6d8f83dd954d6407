"""What Content Credentials (C2PA) signing costs per image: the encoder threads' work for one 32x32 image,
a PNG with provenance chunks (`server.png_bytes`) with and without `ContentCredentials.sign_png` (a test
chain from scripts/make_test_chain.py, ES256), in CPU time over `--images` images (32x32 tiles of
docs/samples/diffusion.png), median of `--repeats`; and the bytes a manifest adds to a PNG. Served, the same
cost shows in the worker's CPU per request: `bench/overhead.py` with and without
`--set ATELIER_C2PA_KEY_FILE=... --set ATELIER_C2PA_CHAIN_FILE=...` (docs/PERFORMANCE.md, section 9).

    flock /tmp/atelier-bench.lock .venv/bin/python -m bench.credentials --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from harness.serving import ROOT
from service import pipelines
from service.credentials import Claim, ContentCredentials
from service.server import png_bytes

def test_chain(directory: Path) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("make_test_chain", ROOT / "scripts" / "make_test_chain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_chain(directory)


def sample_tiles() -> np.ndarray:
    """(N, 32, 32, 3) uint8: the committed diffusion samples, cut into images."""
    grid = np.asarray(Image.open(ROOT / "docs" / "samples" / "diffusion.png").convert("RGB"))
    rows, columns = grid.shape[0] // 32, grid.shape[1] // 32
    return np.stack([grid[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for r in range(rows) for c in range(columns)])


def in_process(signer: ContentCredentials, images: int, repeats: int) -> dict:
    tiles = sample_tiles()
    generated = pipelines.Generated(tiles[:1], [7], [None], "diffusion", "1.0.0",
                                    {"steps": 30, "guidance": 3.0, "sampler": "dpmpp_2m", "prompt": "a red heart"})
    provenance = {"Software": "Atelier", "data_source": "Noto Color Emoji", "license": "OFL-1.1"}
    claim = Claim("diffusion seed 7", "diffusion", "1.0.0", 7, generated.parameters)

    def per_image(sign: bool) -> tuple[float, float]:
        """(CPU ms, wall ms) per image. CPU time is the figure: on a shared machine the wall time also
        counts the time other processes held the cores."""
        cpu, wall = time.process_time(), time.perf_counter()
        for index in range(images):
            png = png_bytes(tiles[index % len(tiles)], generated, 7, provenance)
            if sign:
                signer.sign_png(png, claim)
        return (time.process_time() - cpu) / images * 1e3, (time.perf_counter() - wall) / images * 1e3

    per_image(True)  # the first signatures pay one-off set-up
    plain, signed = [], []
    for _ in range(repeats):
        plain.append(per_image(False))
        signed.append(per_image(True))
    png = png_bytes(tiles[0], generated, 7, provenance)
    sign_cpu = [s[0] - p[0] for s, p in zip(signed, plain)]
    return {"png_cpu_ms": round(statistics.median(p[0] for p in plain), 3),
            "png_and_sign_cpu_ms": round(statistics.median(s[0] for s in signed), 3),
            "sign_cpu_ms": round(statistics.median(sign_cpu), 3),
            "sign_cpu_ms_spread": round(max(sign_cpu) - min(sign_cpu), 3),
            "png_and_sign_wall_ms": round(statistics.median(s[1] for s in signed), 3),
            "png_bytes": len(png), "signed_png_bytes": len(signer.sign_png(png, claim))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        chain = test_chain(Path(directory))
        signer = ContentCredentials.from_files(chain["key"], chain["chain"], {"name": "Atelier", "version": "bench"})
        result = {"in_process": in_process(signer, args.images, args.repeats)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
