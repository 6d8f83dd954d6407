"""The trained torch modules, rebuilt from the committed ONNX graphs in models/: the dcgan
generator, the diffusion denoiser (and so its UNet), and the VAE with both halves.

export.report scores these rather than any checkpoint in .cache/: the figures then describe
exactly the committed files the service serves, a fresh clone can reproduce them, and a newer
local run that was never published cannot slip into docs/. bench's naive torch baseline serves
them too.

The dynamo exporter names each initializer after its torch parameter (`blocks.0.conv1.weight`),
so most of a state_dict is a lookup. Two rewrites of the export's offline optimisation are undone:
- GroupNorm's affine weight and bias become anonymous `(C, 1, 1)` constants (`val_45`) of the Mul
  and Add after InstanceNormalization; each node's `namespace` metadata names the GroupNorm module.
- A BatchNorm right after a conv (dcgan's `norm2`, affine=False) is folded into that conv's weight
  and bias, which keep the conv's names: the conv node's `namespace` then names the BatchNorm. The
  folded conv already normalises, so the BatchNorm gets identity statistics (mean 0, var 1 - eps).
The VAE's two graphs each carry `latent_scale`; they must agree. Every module is checked against
onnxruntime on the same inputs (max abs diff <= 1e-4 on every output) before it is used.

    .venv/bin/python -m export.from_onnx        # rebuild all four functions, log each parity
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

from export import dcgan, diffusion, manifest, vae

log = logging.getLogger(__name__)

MODELS_DIR = manifest.MODELS_DIR
# Same weights on both sides, so tighter than export.onnx's 1e-3: fp32, outputs of order 1.
PARITY_BOUND = 1e-4
GRAPHS = {"generate": ("dcgan", "generator.onnx"), "denoise": ("diffusion", "denoiser.onnx"),
          "encode": ("vae", "encoder.onnx"), "decode": ("vae", "decoder.onnx")}


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


def load_generator(models_dir: Path = MODELS_DIR) -> dcgan.Generator:
    """dcgan.Generator: (z (N, 128), class_id (N,)) -> images (N, 3, 32, 32). The graph embeds the
    VAE decoder; its latent_scale is a folded constant there, so the decoder half comes from the
    committed VAE and the parity check proves the two agree."""
    module = dcgan.Generator(dcgan.LatentGenerator(), vae.ScaledDecoder(load_vae(models_dir)))
    module.load_state_dict(rebuilt_state(graph_path("generate", models_dir), module, root="latent_generator."),
                           strict=False)  # the decoder half is already the committed VAE's
    return module.eval()


def load_denoiser(models_dir: Path = MODELS_DIR) -> diffusion.EpsDenoiser:
    """diffusion.EpsDenoiser: (latent, timestep, class_id, text_embedding) -> eps, as served; its
    `.unet` is the raw v-predicting UNet that diffusion.sample takes."""
    module = diffusion.EpsDenoiser(diffusion.UNet())
    module.load_state_dict(rebuilt_state(graph_path("denoise", models_dir), module), strict=False)
    return module.eval()


def load_vae(models_dir: Path = MODELS_DIR) -> vae.VAE:
    """vae.VAE with the encoder from encoder.onnx, the decoder from decoder.onnx and the
    latent_scale both graphs carry (ScaledEncoder multiplies by it, ScaledDecoder divides)."""
    autoencoder = vae.VAE()
    state, scales = {}, []
    for function, root in (("encode", "encoder."), ("decode", "decoder.")):
        path = graph_path(function, models_dir)
        state.update(rebuilt_state(path, autoencoder, root=root))
        scales.append(numpy_helper.to_array(_initializer(path, "latent_scale")).copy())
    if scales[0] != scales[1]:
        raise ValueError(f"latent_scale differs between encoder.onnx ({scales[0]}) and decoder.onnx ({scales[1]})")
    state["latent_scale"] = torch.from_numpy(scales[0])
    autoencoder.load_state_dict(state)  # strict: every key of both halves was found
    return autoencoder.eval()


def graph_path(function: str, models_dir: Path = MODELS_DIR) -> Path:
    model, file_name = GRAPHS[function]
    return models_dir / model / file_name


def _initializer(path: Path, name: str) -> onnx.TensorProto:
    return next(t for t in onnx.load(str(path)).graph.initializer if t.name == name)


def example_inputs(function: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs in each function's served range, keyed by the graph's input names."""
    rng = np.random.default_rng(seed)
    if function == "generate":
        return {"z": rng.standard_normal((batch, dcgan.Z_DIM), np.float32),
                "class_id": rng.integers(0, dcgan.NUM_CLASSES, batch)}
    if function == "denoise":
        return {"latent": rng.standard_normal((batch, *vae.LATENT_SHAPE), np.float32),
                "timestep": rng.uniform(0.002, 0.995, batch).astype(np.float32),
                "class_id": rng.integers(0, diffusion.NUM_CLASSES + 1, batch),
                "text_embedding": (rng.standard_normal((batch, 384)) / np.sqrt(384)).astype(np.float32)}
    if function == "encode":
        return {"image": rng.uniform(-1.0, 1.0, (batch, 3, 32, 32)).astype(np.float32)}
    return {"latent": rng.standard_normal((batch, *vae.LATENT_SHAPE), np.float32)}


def parity(module: nn.Module, function: str, models_dir: Path = MODELS_DIR, batch: int = 4) -> float:
    """Max abs difference, over every output, between the torch module and onnxruntime on the
    same random inputs."""
    inputs = example_inputs(function, batch)
    session = ort.InferenceSession(str(graph_path(function, models_dir)), providers=["CPUExecutionProvider"])
    expected = session.run(None, inputs)
    with torch.no_grad():
        got = module(*(torch.from_numpy(array) for array in inputs.values()))
    got = got if isinstance(got, tuple) else (got,)
    return max(float(np.max(np.abs(g.numpy() - e))) for g, e in zip(got, expected, strict=True))


def load_checked(models_dir: Path = MODELS_DIR) -> dict[str, nn.Module]:
    """The four served functions as torch modules (encode and decode share one VAE), each verified
    against its ONNX graph; raises past PARITY_BOUND."""
    autoencoder = load_vae(models_dir)
    modules = {"generate": load_generator(models_dir), "denoise": load_denoiser(models_dir),
               "encode": vae.ScaledEncoder(autoencoder), "decode": vae.ScaledDecoder(autoencoder)}
    for function, module in modules.items():
        difference = parity(module, function, models_dir)
        if difference > PARITY_BOUND:
            raise AssertionError(f"{function}: torch vs onnxruntime max abs diff {difference:.2e} > {PARITY_BOUND}")
        log.info("%s: torch rebuilt from %s, max abs diff vs onnxruntime %.2e", function,
                 graph_path(function, models_dir).name, difference)
    return modules


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_checked()
