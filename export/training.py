"""What every training recipe shares: data on the device, a time/step budget, EMA, checkpoints.

A recipe stops at `--steps` or `--minutes`, whichever comes first, checkpoints every
`CHECKPOINT_SECONDS`, and resumes from its checkpoint when started again with the same name,
so a run killed with its session loses at most a few minutes.

    python -m export train vae --minutes 20 --seed 0
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from export import data

log = logging.getLogger(__name__)

CHECKPOINT_DIR = data.CACHE_DIR / "checkpoints"
CHECKPOINT_SECONDS = 120.0  # at most two minutes of work lost when a session is stopped
M = TypeVar("M", bound=nn.Module)


@dataclass
class Budget:
    """Stop at `steps` or after `minutes` of training, whichever comes first."""

    steps: int
    minutes: float
    started: float = field(default_factory=time.perf_counter)
    last_checkpoint: float = field(default_factory=time.perf_counter)

    def exhausted(self, step: int) -> bool:
        return step >= self.steps or self.elapsed_minutes() >= self.minutes

    def progress(self, step: int) -> float:
        """Fraction of the budget used, by whichever limit is nearer."""
        return max(step / self.steps, self.elapsed_minutes() / self.minutes)

    def elapsed_minutes(self) -> float:
        return (time.perf_counter() - self.started) / 60.0

    def checkpoint_due(self) -> bool:
        if time.perf_counter() - self.last_checkpoint < CHECKPOINT_SECONDS:
            return False
        self.last_checkpoint = time.perf_counter()
        return True


class EMA:
    """Exponential moving average of a module's weights: smoother samples from a short run."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for ema_param, param in zip(self.module.parameters(), module.parameters()):
            ema_param.lerp_(param.detach(), 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.module.buffers(), module.buffers()):
            ema_buffer.copy_(buffer)


class Run:
    """One recipe's resumable run: the parts it checkpoints (modules, optimisers, EMA), its step,
    its random generator and the minutes spent so far, restored from the last checkpoint."""

    def __init__(self, name: str, parts: dict, generator: torch.Generator, seed: int, steps: int,
                 minutes: float, device: torch.device):
        self.name, self.parts, self.seed, self.steps, self.device = name, parts, seed, steps, device
        self.step, self.generator, self.prior_minutes = 0, generator, 0.0
        self.marks: dict[str, int] = {}  # what a recipe records as it goes (where a phase began, its batch), kept on resume
        state = load_checkpoint(name)
        if state is not None:
            missing = sorted(parts.keys() - state.keys())
            if missing:
                raise ValueError(f"the {name} checkpoint has no {', '.join(missing)}: another recipe made "
                                 f"it; move {checkpoint_path(name)} away to start afresh")
            for key, part in parts.items():
                part.load_state_dict(state[key])
            self.step, self.generator, self.prior_minutes = state["step"], state["generator"], state["minutes"]
            self.marks = state.get("marks", {})
        self.budget = Budget(steps, minutes)

    def running(self) -> bool:
        return not self.budget.exhausted(self.step)

    def advance(self) -> None:
        self.step += 1
        if self.budget.checkpoint_due() or self.budget.exhausted(self.step):
            self.save()

    def minutes(self) -> float:
        return self.prior_minutes + self.budget.elapsed_minutes()

    def save(self, **extra) -> dict:
        state = {key: part.state_dict() for key, part in self.parts.items()}
        state.update(step=self.step, generator=self.generator, seed=self.seed, steps=self.steps,
                     minutes=self.minutes(), device=str(self.device), marks=self.marks, **extra)
        save_checkpoint(self.name, state)
        return state


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)  # only third-party code (sklearn) reads the legacy global RNG
    return torch.Generator().manual_seed(seed)


def recipe_flags(marks: dict[str, int]) -> str:
    """A run's marks as the command-line flags that reproduce them: {"image_from_step": 3} -> "--image-from-step 3"."""
    return " ".join(f"--{mark.replace('_', '-')} {value}" for mark, value in marks.items())


def checkpoint_path(name: str) -> Path:
    return CHECKPOINT_DIR / f"{name}.pt"


def save_checkpoint(name: str, state: dict) -> Path:
    path = checkpoint_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # atomic: a kill mid-write keeps the last good one
    return path


def load_checkpoint(name: str, device: torch.device | str = "cpu") -> dict | None:
    path = checkpoint_path(name)
    if not path.exists():
        return None
    # generator states only unpickle on the CPU; load_state_dict moves tensors to their module
    return torch.load(path, map_location="cpu", weights_only=False)


def trained(name: str, module: M, device: torch.device | str = "cpu") -> M:
    """`module` with the EMA weights of recipe `name`'s checkpoint, in eval mode."""
    state = load_checkpoint(name, device)
    if state is None:
        raise FileNotFoundError(f"no {name} checkpoint: run `python -m export train {name}` first")
    module = module.to(device)
    module.load_state_dict(state["ema"])
    return module.eval()


def training_images(dataset: data.EmojiDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Training split as (N, 3, 32, 32) float in [-1, 1] and (N,) labels, resident on `device`."""
    train = dataset.split(held_out=False)
    images = torch.from_numpy(data.to_unit_range(train.images32)).to(device)
    return images, torch.from_numpy(train.labels).to(device)


class BalancedSampler:
    """Batches drawn class-first, so People & Body (59 % of emoji) does not drown the rest."""

    def __init__(self, labels: torch.Tensor, generator: torch.Generator):
        labels = labels.cpu()
        self.generator = generator
        self.counts = torch.bincount(labels)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.order = torch.argsort(labels, stable=True)

    def __call__(self, batch: int) -> torch.Tensor:
        classes = torch.randint(len(self.counts), (batch,), generator=self.generator)
        within = (torch.rand(batch, generator=self.generator) * self.counts[classes]).long()
        return self.order[self.offsets[classes] + within]


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and a small translation on the white background."""
    batch = images.shape[0]
    flip = torch.rand(batch, generator=generator) < 0.5
    images = torch.where(flip.to(images.device)[:, None, None, None], images.flip(3), images)
    padded = nn.functional.pad(images, (max_shift,) * 4, value=1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy:dy + images.shape[2], dx:dx + images.shape[3]]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
