"""The fp16 variant of an ONNX graph: fp16 weights and activations, fp32 inputs and outputs.

One implementation for both worlds: the exporter (`export/onnx.py`) measures the fp16 graph and
records its sha256 in the manifest; the registry derives the same graph on CUDA (it is not
committed, to stay inside the models' size budget) and refuses it unless the bytes hash to what
the manifest says. `tests/test_fp16.py` checks on CPU that every committed graph reproduces its
recorded `fp16_sha256` byte for byte.

    .venv/bin/python -c "from service.fp16 import half_precision_bytes; \
print(len(half_precision_bytes('models/dcgan/generator.onnx')))"
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16


def half_precision(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter adds one fp32 cast per consumer of a shared initializer, all with the same
    name and output: identical nodes, of which the graph may keep only the first."""
    half = convert_float_to_float16(model, keep_io_types=True)
    seen, unique = set(), []
    for node in half.graph.node:
        key = (node.name, tuple(node.output))
        if node.name and key in seen:
            continue
        seen.add(key)
        unique.append(node)
    del half.graph.node[:]
    half.graph.node.extend(unique)
    return half


def half_precision_bytes(path: Path | str) -> bytes:
    """The serialized fp16 graph of the fp32 graph at `path`, as the manifest's fp16_sha256 hashes it."""
    return half_precision(onnx.load(str(path))).SerializeToString()
