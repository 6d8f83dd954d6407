"""`models/<name>/manifest.json`, the contract between the offline and online worlds: its typed form,
the sha256 of a file, and the check that a model directory holds exactly the files its manifest lists.

`Manifest` is parsed once, when the registry loads, and is what every layer above reads: the
registry (files, functions), the Engine (latent shape, noise size, conditioning), pipelines and
transports (classes, version, provenance). Each model carries its own `classes`. The exporter
(`export/manifest.py`) writes manifests and checks them with the same `file_problems` and
`sha256_file`, so "verified" means one thing in both worlds.

    .venv/bin/python -c "from pathlib import Path; from service.manifest import load_verified; \
print(load_verified(Path('models/dcgan')))"
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from service.errors import ManifestHashMismatch, RegistryError

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GraphFile:
    """One ONNX function of a model: its file, and the sha256 of the fp16 graph derived from it
    (service/fp16.py), when the exporter measured one."""

    file: str
    fp16_sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    family: str
    version: str
    classes: tuple[str, ...]  # this model's own class names; index = class id
    files: Mapping[str, str]  # file name -> sha256
    functions: Mapping[str, GraphFile]  # function name ("generate", "denoise", ...) -> graph
    training: Mapping[str, Any]
    image_size: int = 32
    # family-specific fields, present where the family has them
    z_dim: int | None = None  # gan: noise size
    latent_shape: tuple[int, ...] | None = None  # vae, gmm, diffusion: (C, H, W)
    prior_file: str | None = None  # gmm: the mixture's arrays
    schedule: Mapping[str, Any] | None = None  # diffusion: noise schedule parameters
    null_class: int | None = None  # diffusion: the class id meaning "no class" (guidance's unconditional row)
    text_dim: int | None = None  # diffusion: prompt embedding size
    tokenizer_file: str | None = None  # text encoder
    max_tokens: int | None = None
    themes_file: str | None = None
    styles_file: str | None = None  # style: the built-in styles' feature statistics
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the JSON as written, for /v1/models

    @property
    def data_source(self) -> str:
        data = self.training.get("data", {})
        return str(data.get("source", self.training.get("source", ""))) if isinstance(data, Mapping) else ""

    @property
    def license(self) -> str:
        return str(self.training.get("license", ""))

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Manifest:
        """The typed manifest; KeyError/TypeError/ValueError on a malformed one (`read` names the file)."""
        conditioning = raw.get("conditioning") or {}
        latent_shape = raw.get("latent_shape")
        return cls(
            name=str(raw["name"]), family=str(raw["family"]), version=str(raw["version"]),
            classes=tuple(str(c) for c in raw.get("classes", ())),
            files=MappingProxyType({str(k): str(v) for k, v in raw["files"].items()}),
            functions=MappingProxyType({str(k): GraphFile(str(v["file"]), v.get("fp16_sha256"))
                                        for k, v in raw.get("functions", {}).items()}),
            training=MappingProxyType(dict(raw.get("training", {}))),
            image_size=int(raw.get("image_size", 32)),
            z_dim=_optional(int, raw.get("z_dim")),
            latent_shape=tuple(int(d) for d in latent_shape) if latent_shape is not None else None,
            prior_file=raw.get("prior_file"),
            schedule=MappingProxyType(dict(raw["schedule"])) if "schedule" in raw else None,
            null_class=_optional(int, conditioning.get("null_class")),
            text_dim=_optional(int, conditioning.get("text_dim")),
            tokenizer_file=raw.get("tokenizer_file"),
            max_tokens=_optional(int, raw.get("max_tokens")),
            themes_file=raw.get("themes_file"),
            styles_file=raw.get("styles_file"),
            raw=MappingProxyType(dict(raw)),
        )


def _optional(kind: type, value: Any) -> Any:
    return None if value is None else kind(value)


def read(directory: Path) -> Manifest:
    """The typed manifest of `directory`, without checking files; RegistryError naming it if unreadable."""
    path = directory / MANIFEST
    try:
        return Manifest.parse(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise RegistryError(f"{path}: unreadable manifest ({type(error).__name__}: {error})") from None


def file_problems(directory: Path, files: Mapping[str, str]) -> list[str]:
    """Every way `directory` disagrees with the manifest's `files` (file -> sha256): listed but missing,
    altered, or present but unlisted. Empty when the directory is sound."""
    found = []
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            found.append(f"{path}: listed in the manifest but missing")
        elif sha256_file(path) != expected:
            found.append(f"{path}: sha256 differs from the manifest")
    found.extend(f"{path}: not listed in the manifest" for path in sorted(directory.iterdir())
                 if path.name != MANIFEST and path.name not in files)
    return found


def load_verified(directory: Path) -> Manifest:
    """The manifest, after every listed file matched its sha256 and nothing unlisted was found."""
    manifest = read(directory)
    problems = file_problems(directory, manifest.files)
    if any("sha256 differs" in problem for problem in problems):
        raise ManifestHashMismatch("; ".join(problems) + "; refusing to serve it")
    if problems:
        raise RegistryError("; ".join(problems))
    return manifest
