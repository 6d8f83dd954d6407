"""Utilisation: FLOPs per row counted from an ONNX graph, and the CPU's measured float32 GEMM peak.

FLOPs count the multiply-adds of Conv, MatMul and Gemm (x2), the ops that hold nearly all the
work of these convolutional models; elementwise ops, norms and softmax are left out, so the
utilisation is a slight underestimate. Shapes come from onnx shape inference with the batch axis
fixed (batch 32 by default). The peak is numpy's float32 matmul (OpenBLAS) at 2048x2048 on
`threads` threads, best of several: what this CPU sustains on the friendliest dense kernel.

    .venv/bin/python -m bench.utilisation
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
GRAPHS = {"dcgan.generate": "dcgan/generator.onnx", "diffusion.denoise": "diffusion/denoiser.onnx",
          "vae.decode": "vae/decoder.onnx"}


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].Clear()
            dims[0].dim_value = batch
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    if node.op_type == "Conv":
        weight, out = shapes[node.input[1]], shapes[node.output[0]]  # (Cout, Cin/g, kh, kw), (N, Cout, H, W)
        return int(np.prod(out)) * int(np.prod(weight[1:]))
    if node.op_type == "MatMul":
        a, out = shapes[node.input[0]], shapes[node.output[0]]  # (..., M, K) x (..., K, N) -> (..., M, N)
        return int(np.prod(out)) * a[-1]
    if node.op_type == "Gemm":
        a, out = shapes[node.input[0]], shapes[node.output[0]]
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return int(np.prod(out)) * (a[0] if trans_a else a[1])
    return 0


def flops_per_row(graph: Path, batch: int = 32) -> float:
    """2 x multiply-adds of Conv/MatMul/Gemm per batch row, shapes inferred at `batch`."""
    model = _with_batch(onnx.load(str(graph)), batch)
    shapes = _shapes(model)
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        involved = [shapes.get(name, (-1,)) for name in (*node.input[:2], node.output[0])]
        if any(-1 in shape or not shape for shape in involved):
            raise ValueError(f"{graph.name}: shape inference left {node.op_type} {node.name} unknown: {involved}")
        total += _node_macs(node, shapes)
    return 2.0 * total / batch


def gemm_peak_gflops(threads: int = 2, size: int = 2048, repeats: int = 7) -> float:
    """Best float32 GFLOP/s of numpy's matmul on `threads` threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), np.float32)
    b = rng.standard_normal((size, size), np.float32)
    best = np.inf
    with threadpool_limits(threads):
        a @ b  # warm the BLAS threads and caches
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


def graph_flops(models_dir: Path = MODELS_DIR, batch: int = 32) -> dict[str, float]:
    return {function: flops_per_row(models_dir / path, batch) for function, path in GRAPHS.items()}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for function, flops in graph_flops().items():
        log.info("%-18s %7.1f MFLOP per row", function, flops / 1e6)
    log.info("float32 GEMM peak, 2 threads: %.1f GFLOP/s", gemm_peak_gflops())
