"""models/<name>/manifest.json: write it, and verify a whole registry against it.

    python -m export verify          # exit 1 naming every file that is missing, extra or altered
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

from service.manifest import MANIFEST, file_problems, sha256_file

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SIZE_BUDGET_BYTES = 80 * 1024 * 1024  # committed artifacts in total, DEVELOPERS' rule


class VerificationError(RuntimeError):
    """A registry that must not be served; the message names every offending file."""


def write(model_dir: Path, manifest: dict) -> dict:
    """Hash every file in `model_dir` into the manifest and write it; returns what was written."""
    files = {p.name: sha256_file(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {**manifest, "files": files,
                "created": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()}
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    log.info("wrote %s (%d files)", model_dir / MANIFEST, len(files))
    return manifest


def read(model_dir: Path) -> dict:
    return json.loads((model_dir / MANIFEST).read_text())


def update_metrics(model_dir: Path, metrics: dict) -> None:
    """Merge evaluation figures into a manifest without touching the file hashes."""
    manifest = read(model_dir)
    manifest["metrics"] = {**manifest.get("metrics", {}), **metrics}
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def problems(model_dir: Path) -> list[str]:
    """Every way `model_dir` disagrees with its manifest (empty when it is sound)."""
    try:
        manifest = read(model_dir)
    except (OSError, ValueError) as error:
        return [f"{model_dir / MANIFEST}: unreadable manifest ({error})"]
    return file_problems(model_dir, manifest.get("files", {}))


def verify(models_dir: Path = MODELS_DIR, required: tuple[str, ...] = ()) -> list[dict]:
    """Check every model directory; raise VerificationError listing all problems at once."""
    model_dirs = sorted(p for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []
    found = [f"{models_dir / name}: required model missing" for name in required
             if not (models_dir / name / MANIFEST).is_file()]
    for model_dir in model_dirs:
        found.extend(problems(model_dir))
    total = sum(p.stat().st_size for d in model_dirs for p in d.iterdir() if p.is_file())
    if total > SIZE_BUDGET_BYTES:
        found.append(f"{models_dir}: {total / 2**20:.1f} MiB exceeds the {SIZE_BUDGET_BYTES / 2**20:.0f} MiB budget")
    if found:
        raise VerificationError("model registry failed verification:\n  " + "\n  ".join(found))
    return [read(d) for d in model_dirs]
