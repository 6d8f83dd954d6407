"""The model registry: read every manifest, verify every file's sha256, open onnxruntime sessions.

All or nothing: a missing, altered or unlisted file, or an unreadable manifest, raises a
`RegistryError` naming the file before any session opens, so the service never serves a
half-loaded registry. Sessions get the configured providers (CUDA first by default) and
report the provider that actually runs them: onnxruntime-gpu falls back to CPU on a machine
without a GPU, and /v1/models should say so.

    .venv/bin/python -c "from service.registry import Registry; from service.config import load_config; \
print(Registry.load(load_config()).describe())"
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.config import Config
from service.errors import ManifestHashMismatch, RegistryError
from service.fp16 import half_precision_bytes
from service.manifest import Manifest, load_verified

log = logging.getLogger(__name__)

REQUIRED_MODELS = ("dcgan", "vae", "gmm", "diffusion", "text", "sr", "style")


@dataclass(frozen=True)
class LoadedModel:
    name: str
    directory: Path
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)  # function -> session
    precision: str = "fp32"

    @property
    def version(self) -> str:
        return self.manifest.version

    def providers(self) -> list[str]:
        return sorted({p for s in self.sessions.values() for p in s.get_providers()[:1]})


@dataclass(frozen=True)
class Registry:
    models: dict[str, LoadedModel]

    @classmethod
    def load(cls, config: Config) -> Registry:
        manifests = verified_manifests(config.models_dir)
        models = {name: open_model(config, config.models_dir / name, manifest)
                  for name, manifest in manifests.items()}
        return cls(models)

    def manifest(self, model: str) -> Manifest:
        return self.models[model].manifest

    def describe(self) -> dict:
        return {name: {"version": m.version, "providers": m.providers(), "precision": m.precision,
                       "functions": sorted(m.sessions)} for name, m in self.models.items()}


def verified_manifests(models_dir: Path) -> dict[str, Manifest]:
    """Every model's manifest, after all its files matched; RegistryError naming the first bad file."""
    manifests = {name: load_verified(models_dir / name) for name in discover(models_dir)}
    missing = [name for name in REQUIRED_MODELS if name not in manifests]
    if missing:
        raise RegistryError(f"{models_dir}: required models missing: {', '.join(missing)}")
    return manifests


def discover(models_dir: Path) -> list[str]:
    if not models_dir.is_dir():
        raise RegistryError(f"{models_dir}: models directory not found")
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir())


def session_options(config: Config) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # the committed graphs carry only portable (basic) rewrites; the EP-specific fusions happen here
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1  # one batch at a time per function: parallelism lives inside ops
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # onnxruntime-gpu's fallback warnings are reported by providers()
    if not config.ort_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def wants_fp16(config: Config) -> bool:
    if config.use_fp16 != "auto":
        return config.use_fp16 == "on"
    return config.providers[0] == "CUDAExecutionProvider" and "CUDAExecutionProvider" in ort.get_available_providers()


def open_model(config: Config, directory: Path, manifest: Manifest) -> LoadedModel:
    providers = [p for p in config.providers if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
    fp16 = wants_fp16(config)
    sessions = {}
    for function, graph_file in manifest.functions.items():
        graph: str | bytes = str(directory / graph_file.file)
        if fp16 and graph_file.fp16_sha256 is not None:
            graph = derived_fp16(directory / graph_file.file, graph_file.fp16_sha256)
        sessions[function] = ort.InferenceSession(graph, session_options(config), providers=providers)
    model = LoadedModel(manifest.name, directory, manifest, sessions, "fp16" if fp16 else "fp32")
    log.info("loaded %s %s: functions %s on %s", model.name, model.version, sorted(sessions), model.providers())
    return model


def derived_fp16(path: Path, expected_sha256: str) -> bytes:
    """The fp16 graph the exporter measured, derived here (not committed: the 80 MB budget) and
    checked against the hash the manifest recorded, so it is as verified as the fp32 file."""
    graph = half_precision_bytes(path)
    if hashlib.sha256(graph).hexdigest() != expected_sha256:
        raise ManifestHashMismatch(f"{path}: derived fp16 graph differs from the manifest's fp16_sha256")
    return graph


def load_gmm(model: LoadedModel) -> dict[str, np.ndarray]:
    """The prior's arrays, with `cholesky` (K, 256, 256) holding one factor per component whatever
    the file's layout (docs/INTERFACES.md)."""
    with np.load(model.directory / model.manifest.prior_file) as arrays:
        prior = {key: arrays[key] for key in arrays.files}
    return {**{k: v for k, v in prior.items() if k not in ("basis", "scales", "isotropic")},
            "cholesky": gmm_factors(prior)}


def load_styles(model: LoadedModel) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Built-in style name -> its encoder features' per-channel mean and standard deviation, (C, 1, 1) each."""
    with np.load(model.directory / model.manifest.styles_file) as arrays:
        return {str(name): (mean[:, None, None].astype(np.float32), std[:, None, None].astype(np.float32))
                for name, mean, std in zip(arrays["names"], arrays["mean"], arrays["std"])}


def gmm_factors(prior: dict[str, np.ndarray]) -> np.ndarray:
    """(K, 256, 256) float16 F_k with F_k F_k^T = component k's covariance: the stored Cholesky factors,
    or, from the low-rank layout, the symmetric square root U_k diag(scales_k) U_k^T + s I."""
    if "cholesky" in prior:
        return prior["cholesky"]
    basis = prior["basis"].astype(np.float32)
    square_root = np.einsum("kir,kr,kjr->kij", basis, prior["scales"], basis)
    return (square_root + prior["isotropic"] * np.eye(basis.shape[1], dtype=np.float32)).astype(np.float16)
