"""PyTorch -> ONNX for every served graph: dynamic batch axis, checker, parity, fp16 check.

Each graph is exported with torch's default (dynamo) exporter at opset 18, checked with
`onnx.checker`, rewritten with onnxruntime's *basic* offline optimisations (constant folding and
redundant-node removal only: portable across execution providers, unlike the extended fusions,
which the service applies at load time), and compared with torch at batch 1 and 16. The fp16
variant is not committed (the 80 MB budget holds the fp32 graphs and the fp16 text encoder); the
service derives it at load with onnxruntime's converter, and its deviation is measured here.

    python -m export onnx vae          # or dcgan, diffusion, text, gmm, all
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.fp16 import half_precision

log = logging.getLogger(__name__)

OPSET = 18
PARITY_BOUND = 1e-3  # fp32 torch vs onnxruntime, max abs diff on outputs of order 1
PARITY_SEED = 1234


@dataclass(frozen=True)
class GraphSpec:
    """One served function: its module, how to make example inputs, names and dynamic axes."""

    module: torch.nn.Module
    make_inputs: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]  # batch -> inputs
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: tuple[dict[int, str], ...] = ()  # per input, beyond the batch axis 0


def export_graph(spec: GraphSpec, path: Path) -> dict:
    """Export, check, optimise, and measure parity; returns the metrics for the manifest."""
    spec.module.eval()
    example = spec.make_inputs(2, torch.Generator().manual_seed(PARITY_SEED))
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = []
    for i, _ in enumerate(example):
        axes = {0: batch}
        for axis, name in (spec.dynamic_axes[i] if i < len(spec.dynamic_axes) else {}).items():
            axes[axis] = torch.export.Dim(name, min=1, max=512)
        dynamic.append(axes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(spec.module, example, dynamo=True, opset_version=OPSET,
                                    input_names=list(spec.input_names), output_names=list(spec.output_names),
                                    dynamic_shapes=tuple(dynamic), verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    optimise_offline(path)
    parity = {f"batch{n}": max_abs_diff(spec, path, n) for n in (1, 16)}
    if max(parity.values()) > PARITY_BOUND:
        raise AssertionError(f"{path.name}: torch vs onnxruntime differ by {parity} > {PARITY_BOUND}")
    fp16 = fp16_max_abs_diff(spec, path)
    log.info("%s: parity %s, fp16 %s", path.name, parity, fp16)
    return {"parity_max_abs": parity, "fp16_max_abs": fp16}


def store_weights_in_half(path: Path, minimum_elements: int = 256) -> dict:
    """Rewrite the graph with its float weights stored as float16, each behind a Cast to float32 that
    onnxruntime folds into a constant when it loads the graph: half the bytes on disk, fp32 arithmetic at
    run time. For graphs whose size the models' budget cannot afford in fp32. Returns the bytes before/after."""
    before = path.stat().st_size
    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for initializer in graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT or np.prod(initializer.dims) < minimum_elements:
            continue
        name = initializer.name
        half = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(initializer).astype(np.float16), f"{name}_fp16")
        initializer.CopyFrom(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [name], to=onnx.TensorProto.FLOAT, name=f"{name}_cast"))
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return {"bytes_fp32": before, "bytes": path.stat().st_size, "weights_stored": "float16, cast to float32 at load"}


def optimise_offline(path: Path) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(path))  # re-save in one file with no external data
    onnx.save(model, str(path))


def run_torch(spec: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = spec.module(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return [o.float().numpy() for o in outputs]


def feed(spec: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in zip(spec.input_names, inputs)}


def max_abs_diff(spec: GraphSpec, path: Path, batch: int) -> float:
    inputs = spec.make_inputs(batch, torch.Generator().manual_seed(PARITY_SEED + batch))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feed(spec, inputs))
    return float(max(np.max(np.abs(g - w)) for g, w in zip(got, run_torch(spec, inputs))))


def fp16_max_abs_diff(spec: GraphSpec, path: Path) -> dict:
    """Deviation of the fp16 graph from torch fp32 at batch 16, run by onnxruntime on this CPU."""
    inputs = spec.make_inputs(16, torch.Generator().manual_seed(PARITY_SEED + 16))
    half = half_precision(onnx.load(str(path)))
    try:
        session = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, feed(spec, inputs))
    except Exception as error:  # noqa: BLE001 - an EP without fp16 kernels is a fact to record
        return {"max_abs": None, "measured_on": "not measured on CPU", "reason": str(error)[:200]}
    diff = float(max(np.max(np.abs(g - w)) for g, w in zip(got, run_torch(spec, inputs))))
    return {"max_abs": diff, "measured_on": "onnxruntime CPUExecutionProvider, batch 16"}


def io_description(path: Path) -> dict:
    """Inputs and outputs as the manifest lists them: name, dtype, shape with named dynamic axes."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(value) -> dict:
        tensor = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        shape = ["N" if i == 0 else s for i, s in enumerate(shape)]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": shape}

    return {"inputs": [describe(v) for v in model.graph.input], "outputs": [describe(v) for v in model.graph.output]}
