"""A Gaussian-mixture prior over the VAE's latents, one small mixture per class.

A plain VAE samples its prior N(0, I), which the encoder never filled evenly: decoded prior
samples are mushy. Fitting scikit-learn GaussianMixtures on the encoded training set (per class,
so a class id picks its components) gives a prior the decoder actually knows. The service
samples it in numpy from `gmm.npz` (layout in docs/INTERFACES.md).

    python -m export train gmm --seed 0
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from export import data, diffusion, training, vae

log = logging.getLogger(__name__)

SAMPLES_PER_COMPONENT = 80  # below this a 256-d full covariance is mostly the regulariser
MAX_COMPONENTS_PER_CLASS = 4
REG_COVAR = 1e-2  # latents have unit variance: a 1 % floor keeps small classes' covariances sane


def fit(seed: int, device: torch.device) -> dict:
    training.seed_everything(seed)
    images, labels = training.training_images(data.load(), device)
    means, _ = diffusion.encode_dataset(vae.load_trained(device), images)  # mirrored images included
    latents = means.reshape(len(means), -1).cpu().numpy().astype(np.float64)
    labels = torch.cat([labels, labels]).cpu().numpy()
    weights, centres, choleskies, component_class = [], [], [], []
    for class_id in range(len(data.GROUPS)):
        members = latents[labels == class_id]
        count = int(np.clip(len(members) // SAMPLES_PER_COMPONENT, 1, MAX_COMPONENTS_PER_CLASS))
        mixture = GaussianMixture(count, covariance_type="full", reg_covar=REG_COVAR, random_state=seed,
                                  max_iter=200).fit(members)
        weights.append(mixture.weights_), centres.append(mixture.means_)
        choleskies.append(np.linalg.cholesky(mixture.covariances_))
        component_class.append(np.full(count, class_id))
        log.info("gmm class %d: %d latents, %d components", class_id, len(members), count)
    return {"weights": np.concatenate(weights).astype(np.float32),
            "means": np.concatenate(centres).astype(np.float32),
            # float16 halves the file; sampling noise dwarfs a 1e-3 relative error in the factor
            "cholesky": np.concatenate(choleskies).astype(np.float16),
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
