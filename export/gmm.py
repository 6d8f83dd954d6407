"""A Gaussian-mixture prior over the VAE's latents, one mixture per class.

A plain VAE samples its prior N(0, I), which the encoder never filled evenly: decoded prior
samples are mushy. Fitting mixtures on the encoded training set (per class, so a class id picks
its components) gives a prior the decoder knows. The first version fit up to 4 full 256-d
Gaussians per class (about 80 latents each): a sample was a Gaussian blend of some 80 different
emoji, which the decoder draws as watercolour mush. Measured with the judge
(`python -m export.gmm`, docs/gmm-selection.json), what helps is many small components, about 20
latents each (194 in all): a sample then stays near a handful of similar emoji. A full
covariance fit from ~20 points is its sample covariance (rank < 20) plus the `reg_covar`
diagonal, so each is stored exactly as its top RANK eigenvectors and scales plus that isotropic
floor, 3 MB instead of 25 MB of 256x256 factors (the models' 80 MB budget). The service expands
each to the symmetric square root U diag(sqrt(lambda + s^2) - s) U^T + s I at load
(docs/INTERFACES.md), so its sampler is unchanged.

    python -m export train gmm --seed 0
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from export import data, training, vae
from service import pipelines, registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    samples_per_component: int = 80  # components per class = latents // this, clipped
    max_components_per_class: int = 4
    reg_covar: float = 1e-2  # latents have unit variance: the isotropic floor of every covariance
    temperature: float = 1.0  # scale on every factor: < 1 samples nearer the component means
    rank: int | None = None  # store each covariance as RANK directions + the floor (None: full Cholesky)


SETTINGS = Settings(samples_per_component=20, max_components_per_class=64, rank=32)


def training_latents(device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means of every training image and its mirror image, as (2N, 256), with labels."""
    from export import diffusion, from_onnx

    images, labels = training.training_images(data.load(), device)
    means, _ = diffusion.encode_dataset(from_onnx.load_vae().to(device), images)
    return means.reshape(len(means), -1).cpu().numpy().astype(np.float64), torch.cat([labels, labels]).cpu().numpy()


def fit(seed: int, device: torch.device, settings: Settings = SETTINGS,
        latents: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    training.seed_everything(seed)
    latents, labels = latents if latents is not None else training_latents(device)
    weights, centres, covariances, component_class = [], [], [], []
    for class_id in range(len(data.GROUPS)):
        members = latents[labels == class_id]
        count = int(np.clip(len(members) // settings.samples_per_component, 1, settings.max_components_per_class))
        mixture = GaussianMixture(count, covariance_type="full", reg_covar=settings.reg_covar, random_state=seed,
                                  max_iter=300).fit(members)
        weights.append(mixture.weights_), centres.append(mixture.means_), covariances.append(mixture.covariances_)
        component_class.append(np.full(count, class_id))
        log.info("gmm class %d: %d latents, %d components", class_id, len(members), count)
    prior = {"weights": np.concatenate(weights).astype(np.float32),
             "means": np.concatenate(centres).astype(np.float32),
             "component_class": np.concatenate(component_class).astype(np.int64)}
    covariances = np.concatenate(covariances) * settings.temperature**2
    if settings.rank is None:
        # float16 halves the file; sampling noise dwarfs a 1e-3 relative error in the factor
        return {**prior, "cholesky": np.linalg.cholesky(covariances).astype(np.float16)}
    floor = settings.reg_covar * settings.temperature**2
    eigenvalues, eigenvectors = np.linalg.eigh(covariances)  # ascending
    top = eigenvalues[:, -settings.rank:]
    log.info("gmm: variance above the floor beyond rank %d: at most %.2e", settings.rank,
             float(np.max(eigenvalues[:, :-settings.rank] - floor)))
    return {**prior, "basis": eigenvectors[:, :, -settings.rank:].astype(np.float16),
            "scales": (np.sqrt(np.maximum(top, floor)) - np.sqrt(floor)).astype(np.float32),
            "isotropic": np.float32(np.sqrt(floor))}


def sample(mixture: dict, class_ids: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
    """Latents (N, 4, 8, 8) for the given classes, one generator per sample (the service's rule)."""
    factor = registry.gmm_factors(mixture)  # the service's own expansion
    out = []
    for class_id, rng in zip(class_ids, rngs):
        members = np.flatnonzero(mixture["component_class"] == class_id)
        probabilities = mixture["weights"][members] / mixture["weights"][members].sum()
        k = members[rng.choice(len(members), p=probabilities)]
        noise = rng.standard_normal(mixture["means"].shape[1]).astype(np.float32)
        out.append(mixture["means"][k] + factor[k].astype(np.float32) @ noise)
    return np.stack(out).reshape(len(out), *vae.LATENT_SHAPE)


CANDIDATES = (  # the first version's settings first; measured 2026-12-03 (docs/gmm-selection.json)
    Settings(),
    Settings(temperature=0.7),
    Settings(samples_per_component=20, max_components_per_class=64),
    SETTINGS,
)


def compare(which: list[int] | None = None, seed: int = 0, samples: int = 1000) -> list[dict]:
    """Candidates (all, or those numbered in `which`) scored by the judge at equal counts, merged
    into docs/gmm-selection.json by their settings."""
    from export import from_onnx, report

    torch.set_num_threads(2)
    device = torch.device("cpu")
    dataset = data.load()
    scorer, _ = report.make_judge(dataset, device, (samples,), sanity_checks=False)  # evaluate runs them
    decoder = vae.ScaledDecoder(from_onnx.load_vae()).eval()
    latents = training_latents(device)
    class_ids = report.training_like_class_ids(dataset, samples)
    rows = []
    for settings in [CANDIDATES[i] for i in which] if which else CANDIDATES:
        mixture = fit(seed, device, settings, latents)
        latents = sample(mixture, class_ids, pipelines.image_rngs(report.SEED, samples))
        images = report.decode(decoder, torch.from_numpy(latents))
        result = scorer.score(images, class_ids)
        rows.append({"settings": asdict(settings), "components": int(len(mixture["weights"])),
                     "file_bytes_uncompressed": int(sum(np.asarray(v).nbytes for v in mixture.values())),
                     **{k: result[k] for k in ("fd", "fd_excess", "fd_floor", "colour_distance",
                                               "class_accuracy_balanced", "diversity_vs_real")}})
        log.info("%s", json.dumps(rows[-1]))
        path = report.DOCS_DIR / "gmm-selection.json"
        previous = json.loads(path.read_text())["rows"] if path.is_file() else []
        merged = [row for row in previous if row["settings"] != rows[-1]["settings"]] + [rows[-1]]
        order = [asdict(c) for c in CANDIDATES]
        merged.sort(key=lambda row: order.index(row["settings"]) if row["settings"] in order else len(order))
        path.write_text(json.dumps({"command": "python -m export.gmm [candidate numbers]", "samples": samples,
                                    "seed": seed, "rows": merged}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    compare([int(arg) for arg in sys.argv[1:]])
    sys.exit(0)
