"""Quality of every generator, judged by a classifier trained here on the training split.

FID_own: the Fréchet distance (Heusel et al. 2017, eq. 6) between Gaussian fits of the
classifier's penultimate features of generated images and of the held-out split, printed beside
a real-vs-real floor (training split vs held-out) and a noise ceiling (uniform noise vs
held-out). Class accuracy: how often the classifier names the class a sample was asked for.
The classifier trains with blur augmentation so it judges content, not sharpness (MEASURED.md:
without it, blurry reconstructions of real images scored 57 %).

    python -m export evaluate            # writes metrics into each manifest and docs/MODELS.md figures
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy import linalg
from torch import nn

from export import data, training
from export.layers import ResBlock

log = logging.getLogger(__name__)

FEATURE_DIM = 128


class Classifier(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), ResBlock(width, width), nn.AvgPool2d(2),          # 16
            ResBlock(width, 2 * width), nn.AvgPool2d(2),                                         # 8
            ResBlock(2 * width, 2 * width), nn.AvgPool2d(2),                                     # 4
            nn.Flatten(), nn.Linear(2 * width * 16, FEATURE_DIM), nn.SiLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURE_DIM, len(data.GROUPS)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def random_blur(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur with a per-batch sigma in [0, 1.5] px: generated images are softer than real."""
    sigma = 1.5 * torch.rand((), generator=generator).item()
    if sigma < 0.2:
        return images
    offsets = torch.arange(-3, 4, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)  # (3, 1, 1, 7): depthwise
    images = nn.functional.conv2d(nn.functional.pad(images, (3, 3, 0, 0), mode="replicate"), kernel, groups=3)
    return nn.functional.conv2d(nn.functional.pad(images, (0, 0, 3, 3), mode="replicate"),
                                kernel.transpose(2, 3), groups=3)


def train(steps: int, minutes: float, seed: int, device: torch.device, batch: int = 128) -> dict:
    generator = training.seed_everything(seed)
    dataset = data.load()
    images, labels = training.training_images(dataset, device)
    model = Classifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sampler = training.BalancedSampler(labels, generator)
    budget, step = training.Budget(steps, minutes), 0
    while not budget.exhausted(step):
        idx = sampler(batch).to(device)
        inputs = random_blur(training.augment(images[idx], generator), generator)
        loss = nn.functional.cross_entropy(model(inputs), labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True), loss.backward(), opt.step()
        step += 1
    model.eval()
    accuracy, balanced = held_out_accuracy(model, dataset, device)
    state = {"model": model.state_dict(), "step": step, "seed": seed, "minutes": budget.elapsed_minutes(),
             "held_out_accuracy": accuracy, "held_out_balanced_accuracy": balanced, "device": str(device)}
    training.save_checkpoint("classifier", state)
    log.info("classifier: %d steps, held-out accuracy %.3f (balanced %.3f)", step, accuracy, balanced)
    return state


@torch.no_grad()
def held_out_accuracy(model: Classifier, dataset: data.EmojiDataset, device: torch.device) -> tuple[float, float]:
    held_out = dataset.split(held_out=True)
    predicted = predict(model, held_out.images32, device)
    per_class = [np.mean(predicted[held_out.labels == c] == c) for c in np.unique(held_out.labels)]
    return float(np.mean(predicted == held_out.labels)), float(np.mean(per_class))


@torch.no_grad()
def features_and_logits(model: Classifier, images_uint8: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    features, logits = [], []
    for chunk in np.array_split(images_uint8, max(1, len(images_uint8) // 256)):
        f = model.features(torch.from_numpy(data.to_unit_range(chunk)).to(device))
        features.append(f.cpu().numpy()), logits.append(model.head(f).cpu().numpy())
    return np.concatenate(features).astype(np.float64), np.concatenate(logits)


def predict(model: Classifier, images_uint8: np.ndarray, device) -> np.ndarray:
    return features_and_logits(model, images_uint8, device)[1].argmax(1)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½)  (Heusel et al. 2017, eq. 6)."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * np.real(root)))


def load_classifier(device) -> Classifier:
    state = training.load_checkpoint("classifier", device)
    if state is None:
        raise FileNotFoundError("no classifier checkpoint: run "
                                "`python -m export train classifier --minutes 12 --seed 0` first")
    model = Classifier().to(device)
    model.load_state_dict(state["model"])
    return model.eval()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, exactly as the service converts."""
    array = images.detach().float().cpu().numpy()
    return np.clip(np.round((array + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def score(model: Classifier, generated: np.ndarray, requested: np.ndarray | None,
          reference_features: np.ndarray, device) -> dict:
    """FID_own against the held-out features and (when classes were requested) class accuracy."""
    features, logits = features_and_logits(model, generated, device)
    result = {"fid_own": round(frechet_distance(features, reference_features), 3), "samples": int(len(generated))}
    if requested is not None:
        predicted = logits.argmax(1)
        per_class = {data.GROUPS[c]: round(float(np.mean(predicted[requested == c] == c)), 3)
                     for c in np.unique(requested)}
        result["class_accuracy"] = round(float(np.mean(predicted == requested)), 3)
        result["class_accuracy_per_class"] = per_class
    return result
