"""The service's fp16 conversion (service/fp16.py) reproduces, byte for byte, the graph the exporter
measured and recorded in each manifest's `fp16_sha256`; CUDA serves exactly that graph."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.config import load_config
from service.manifest import read
from service.fp16 import half_precision_bytes
from service.registry import derived_fp16, discover

MODELS_DIR = load_config({}).models_dir
GRAPHS = [(name, function, graph) for name in discover(MODELS_DIR)
          for function, graph in read(MODELS_DIR / name).functions.items() if graph.fp16_sha256]


def test_every_fp32_graph_served_on_cuda_has_a_recorded_fp16_hash():
    assert {(name, function) for name, function, _ in GRAPHS} >= {("dcgan", "generate"), ("vae", "decode"),
                                                                   ("vae", "encode"), ("diffusion", "denoise")}


@pytest.mark.parametrize("name, function, graph", GRAPHS, ids=[f"{n}.{f}" for n, f, _ in GRAPHS])
def test_fp16_conversion_reproduces_the_manifest_hash(name, function, graph):
    derived = half_precision_bytes(MODELS_DIR / name / graph.file)
    assert hashlib.sha256(derived).hexdigest() == graph.fp16_sha256


def test_registry_refuses_an_fp16_graph_whose_hash_differs(tmp_path: Path):
    name, _, graph = GRAPHS[0]
    with pytest.raises(Exception, match="fp16_sha256"):
        derived_fp16(MODELS_DIR / name / graph.file, "0" * 64)
