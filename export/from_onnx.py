"""The trained torch modules, rebuilt from the committed ONNX graphs, for the naive baseline.

The dynamo exporter names each initializer after its torch parameter (`blocks.0.conv1.weight`),
so most of a state_dict is a lookup. Two rewrites of the export's offline optimisation are undone:
- GroupNorm's affine weight and bias become anonymous `(C, 1, 1)` constants (`val_45`) of the Mul
  and Add after InstanceNormalization; each node's `namespace` metadata names the GroupNorm module.
- A BatchNorm right after a conv (dcgan's `norm2`, affine=False) is folded into that conv's weight
  and bias, which keep the conv's names: the conv node's `namespace` then names the BatchNorm. The
  folded conv already normalises, so the BatchNorm gets identity statistics (mean 0, var 1 - eps).
No checkpoint is needed: a fresh clone rebuilds the baseline from `models/` alone, and every module
is checked against onnxruntime (max abs diff <= 1e-4) before it serves.

    .venv/bin/python -m bench.torch_from_onnx
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from export import dcgan, diffusion, vae

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
PARITY_BOUND = 1e-4  # torch eager vs onnxruntime, both fp32, outputs of order 1


def rebuilt_state(graph_path: Path, module: nn.Module, root: str = "") -> dict[str, torch.Tensor]:
    """The state_dict entries of `module` (whose keys start with `root`) recovered from the graph."""
    graph = onnx.load(str(graph_path)).graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    wanted = {key: value for key, value in module.state_dict().items()
              if key.startswith(root) and not key.endswith("num_batches_tracked")}
    state = {key: torch.from_numpy(constants[key].copy()) for key in wanted if key in constants}
    for node in graph.node:
        owner = _namespace_module(node)
        if owner is None:
            continue
        path, kind = owner
        if kind == "GroupNorm" and node.op_type in ("Mul", "Add"):
            field = "weight" if node.op_type == "Mul" else "bias"
            anonymous = [name for name in node.input if name in constants and name not in wanted]
            if len(anonymous) == 1 and f"{path}.{field}" in wanted:
                state[f"{path}.{field}"] = torch.from_numpy(constants[anonymous[0]].reshape(-1).copy())
        elif kind == "BatchNorm2d" and node.op_type == "Conv" and f"{path}.running_mean" in wanted:
            eps = module.get_submodule(path).eps
            channels = wanted[f"{path}.running_mean"].shape[0]
            state[f"{path}.running_mean"] = torch.zeros(channels)
            state[f"{path}.running_var"] = torch.full((channels,), 1.0 - eps)
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise KeyError(f"{graph_path.name}: no initializer for {missing}")
    for key, tensor in state.items():
        if tensor.shape != wanted[key].shape:
            raise ValueError(f"{graph_path.name}: {key} has shape {tuple(tensor.shape)}, "
                             f"the module wants {tuple(wanted[key].shape)}")
    return state


def _namespace_module(node: onnx.NodeProto) -> tuple[str, str] | None:
    """(module path, class name) of the innermost module the exporter recorded for a node, e.g.
    ': export.diffusion.EpsDenoiser/unet: export.diffusion.UNet/unet.mid.norm1: torch...GroupNorm/...'
    -> ('unet.mid.norm1', 'GroupNorm')."""
    namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
    scopes = [scope.split(": ", 1) for scope in namespace.split("/") if ": " in scope]
    modules = [(path, cls.rsplit(".", 1)[-1]) for path, cls in scopes[:-1] if path]  # last = the op
    return modules[-1] if modules else None


def load_generator(models_dir: Path = MODELS_DIR) -> nn.Module:
    """dcgan.Generator: (z (N, 128), class_id (N,)) -> images (N, 3, 32, 32)."""
    module = dcgan.Generator()
    module.load_state_dict(rebuilt_state(models_dir / "dcgan" / "generator.onnx", module), strict=False)
    return module.eval()


def load_denoiser(models_dir: Path = MODELS_DIR) -> nn.Module:
    """diffusion.EpsDenoiser: (latent, timestep, class_id, text_embedding) -> eps, as served."""
    module = diffusion.EpsDenoiser(diffusion.UNet())
    module.load_state_dict(rebuilt_state(models_dir / "diffusion" / "denoiser.onnx", module), strict=False)
    return module.eval()


def load_decoder(models_dir: Path = MODELS_DIR) -> nn.Module:
    """vae.ScaledDecoder: scaled latent (N, 4, 8, 8) -> image (N, 3, 32, 32); only the decoder
    half (and latent_scale) of the VAE is in the graph, the encoder stays untouched."""
    autoencoder = vae.VAE()
    state = rebuilt_state(models_dir / "vae" / "decoder.onnx", autoencoder, root="decoder.")
    state["latent_scale"] = torch.from_numpy(
        numpy_helper.to_array(_initializer(models_dir / "vae" / "decoder.onnx", "latent_scale")).copy())
    autoencoder.load_state_dict(state, strict=False)
    return vae.ScaledDecoder(autoencoder).eval()


def _initializer(graph_path: Path, name: str) -> onnx.TensorProto:
    return next(t for t in onnx.load(str(graph_path)).graph.initializer if t.name == name)


def example_inputs(function: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if function == "generate":
        return {"z": rng.standard_normal((batch, dcgan.Z_DIM), np.float32),
                "class_id": rng.integers(0, dcgan.NUM_CLASSES, batch)}
    if function == "denoise":
        return {"latent": rng.standard_normal((batch, *vae.LATENT_SHAPE), np.float32),
                "timestep": rng.uniform(0.002, 0.995, batch).astype(np.float32),
                "class_id": rng.integers(0, diffusion.NUM_CLASSES + 1, batch),
                "text_embedding": (rng.standard_normal((batch, 384)) / np.sqrt(384)).astype(np.float32)}
    return {"latent": rng.standard_normal((batch, *vae.LATENT_SHAPE), np.float32)}


def parity(module: nn.Module, graph_path: Path, function: str, batch: int = 4) -> float:
    """Max abs difference between the torch module and onnxruntime on the same random inputs."""
    inputs = example_inputs(function, batch)
    session = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, inputs)[0]
    with torch.no_grad():
        got = module(*(torch.from_numpy(array) for array in inputs.values())).numpy()
    return float(np.max(np.abs(got - expected)))


def load_checked(models_dir: Path = MODELS_DIR) -> dict[str, nn.Module]:
    """Generator, denoiser and decoder, each verified against its ONNX graph (raises past 1e-4)."""
    modules = {"generate": load_generator(models_dir), "denoise": load_denoiser(models_dir),
               "decode": load_decoder(models_dir)}
    graphs = {"generate": models_dir / "dcgan" / "generator.onnx",
              "denoise": models_dir / "diffusion" / "denoiser.onnx", "decode": models_dir / "vae" / "decoder.onnx"}
    for function, module in modules.items():
        difference = parity(module, graphs[function], function)
        if difference > PARITY_BOUND:
            raise AssertionError(f"{function}: torch vs onnxruntime max abs diff {difference:.2e} > {PARITY_BOUND}")
        log.info("%s: torch rebuilt from %s, max abs diff vs onnxruntime %.2e", function,
                 graphs[function].name, difference)
    return modules


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_checked()
