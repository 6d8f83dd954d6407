"""A Gaussian-mixture prior over the VAE's latents, one mixture per class.

A plain VAE samples its prior N(0, I), which the encoder never filled evenly: decoded prior
samples are mushy. Fitting mixtures on the encoded training set (per class, so a class id picks
its components) gives a prior the decoder knows. The first version fit up to 4 full 256-d
Gaussians per class, about 80 latents per component: the covariances were mostly regulariser and
the samples watercolour mush. This one fits in the top PCA_DIMS principal directions of all
latents, where a full covariance is estimable, with more components per class, and gives the
discarded directions back only a fraction of their variance (RESIDUAL_SHARE), since noise there
is what the decoder renders as mush. Each component's full 256-d covariance is then
W S_k W^T + RESIDUAL_SHARE * diag(residual variance), stored as its Cholesky factor, so the served
layout (docs/INTERFACES.md) and the service's sampler are unchanged. The settings were chosen by
`python -m export.gmm` (docs/gmm-selection.json), which scores candidate settings with the judge.

    python -m export train gmm --seed 0
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from export import data, training, vae

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    pca_dims: int = 256  # below 256: full covariances in this PCA subspace, the rest as a diagonal
    covariance: str = "full"  # "full" or "diag" (in the full 256-d space)
    samples_per_component: int = 80  # components per class = latents // this, clipped
    max_components_per_class: int = 4
    residual_share: float = 0.1  # share of the discarded directions' variance given back (PCA only)
    reg_covar: float = 1e-2
    temperature: float = 1.0  # scale on every factor: < 1 samples nearer the component means


SETTINGS = Settings()


def training_latents(device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means of every training image and its mirror image, as (2N, 256), with labels."""
    from export import dcgan, from_onnx

    images, labels = training.training_images(data.load(), device)
    encoder = vae.ScaledEncoder(from_onnx.load_vae()).to(device).eval()
    means, _ = dcgan.encode_training_set(encoder, images)
    return means.reshape(len(means), -1).cpu().numpy().astype(np.float64), torch.cat([labels, labels]).cpu().numpy()


def fit(seed: int, device: torch.device, settings: Settings = SETTINGS,
        latents: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    training.seed_everything(seed)
    latents, labels = latents if latents is not None else training_latents(device)
    subspace = settings.pca_dims < latents.shape[1]
    if subspace:
        pca = PCA(settings.pca_dims, random_state=seed).fit(latents)
        basis, projected = pca.components_.T, pca.transform(latents)  # (256, d), (2N, d)
        residual = latents - pca.inverse_transform(projected)
        residual_cov = np.diag(settings.residual_share * residual.var(axis=0) + 1e-6)
    weights, centres, factors, component_class = [], [], [], []
    for class_id in range(len(data.GROUPS)):
        members = (projected if subspace else latents)[labels == class_id]
        count = int(np.clip(len(members) // settings.samples_per_component, 1, settings.max_components_per_class))
        mixture = GaussianMixture(count, covariance_type="full" if subspace else settings.covariance,
                                  reg_covar=settings.reg_covar, random_state=seed, max_iter=300).fit(members)
        if subspace:
            centres.append(pca.mean_ + mixture.means_ @ basis.T)
            factors.append(np.linalg.cholesky(basis @ mixture.covariances_ @ basis.T + residual_cov))
        elif settings.covariance == "diag":
            centres.append(mixture.means_)
            factors.append(np.sqrt(mixture.covariances_)[:, :, None] * np.eye(latents.shape[1]))
        else:
            centres.append(mixture.means_)
            factors.append(np.linalg.cholesky(mixture.covariances_))
        weights.append(mixture.weights_)
        component_class.append(np.full(count, class_id))
        log.info("gmm class %d: %d latents, %d components", class_id, len(members), count)
    return {"weights": np.concatenate(weights).astype(np.float32),
            "means": np.concatenate(centres).astype(np.float32),
            # float16 halves the file; sampling noise dwarfs a 1e-3 relative error in the factor
            "cholesky": (settings.temperature * np.concatenate(factors)).astype(np.float16),
            "component_class": np.concatenate(component_class).astype(np.int64)}


def sample(mixture: dict, class_ids: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
    """Latents (N, 4, 8, 8) for the given classes, one generator per sample (the service's rule)."""
    out = []
    for class_id, rng in zip(class_ids, rngs):
        members = np.flatnonzero(mixture["component_class"] == class_id)
        probabilities = mixture["weights"][members] / mixture["weights"][members].sum()
        k = members[rng.choice(len(members), p=probabilities)]
        noise = rng.standard_normal(mixture["means"].shape[1]).astype(np.float32)
        out.append(mixture["means"][k] + mixture["cholesky"][k].astype(np.float32) @ noise)
    return np.stack(out).reshape(len(out), *vae.LATENT_SHAPE)


CANDIDATES = (  # the first version's settings first; measured 2026-12-03 (docs/gmm-selection.json)
    Settings(),
    Settings(samples_per_component=20, max_components_per_class=64),
    Settings(covariance="diag", samples_per_component=10, max_components_per_class=128, reg_covar=1e-3),
    Settings(temperature=0.7),
    Settings(samples_per_component=20, max_components_per_class=64, temperature=0.7),
    Settings(pca_dims=64, samples_per_component=20, max_components_per_class=64, residual_share=0.3),
)


def compare(seed: int = 0, samples: int = 1000) -> list[dict]:
    """Every candidate scored by the judge at equal counts (docs/gmm-selection.json)."""
    from export import from_onnx, report

    torch.set_num_threads(2)
    device = torch.device("cpu")
    dataset = data.load()
    scorer, _ = report.make_judge(dataset, device, (samples,), sanity_checks=False)  # evaluate runs them
    decoder = vae.ScaledDecoder(from_onnx.load_vae()).eval()
    latents = training_latents(device)
    class_ids = report.training_like_class_ids(dataset, samples)
    rows = []
    for settings in CANDIDATES:
        mixture = fit(seed, device, settings, latents)
        images = report.decode(decoder, torch.from_numpy(sample(mixture, class_ids, report.image_rngs(samples))))
        result = scorer.score(images, class_ids)
        rows.append({"settings": asdict(settings), "components": int(len(mixture["weights"])),
                     **{k: result[k] for k in ("fd", "fd_excess", "fd_floor", "colour_distance",
                                               "class_accuracy_balanced", "diversity_vs_real")}})
        log.info("%s", json.dumps(rows[-1]))
    path = report.DOCS_DIR / "gmm-selection.json"
    path.write_text(json.dumps({"command": "python -m export.gmm", "samples": samples, "seed": seed,
                                "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    compare()
    sys.exit(0)
