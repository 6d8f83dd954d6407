"""The Engine: every model function as an awaitable over its continuous batcher. Tensors in,
tensors out; no PNG, HTTP or user-input validation here.

One Engine per worker process owns one `ContinuousBatcher` per ONNX function, so every caller
in the process (JSON, OIP HTTP, OIP gRPC, OpenAI routes) shares the same runs. Classifier-free
guidance submits the conditional and the unconditional row of an image together, so both are
always computed in the same run.

    .venv/bin/python -m pytest tests/test_pipelines.py
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from service.batcher import CohortGate, ContinuousBatcher, RunCost, Tensors
from service.config import Config
from service.manifest import Manifest
from service.registry import LoadedModel, Registry, load_gmm, load_styles

log = logging.getLogger(__name__)

PROMPT_CACHE_SIZE = 4096  # sessions and themes repeat prompts; a 384-d vector is 1.5 kB


def session_runner(model: LoadedModel, function: str):
    """run_batch for the batcher: one onnxruntime call, outputs by name."""
    session = model.sessions[function]
    output_names = [o.name for o in session.get_outputs()]

    def run_batch(inputs: Tensors) -> Tensors:
        return dict(zip(output_names, session.run(output_names, inputs)))

    return run_batch


def simulated_runner(model: LoadedModel, function: str, fixed_ms: float, per_row_ms: float):
    """run_batch for the scheduler benchmark's simulated accelerator: sleeps fixed + per_row * rows
    milliseconds (in the batcher's thread, as a device call would block it) and returns zeros of the
    graph's output shapes. Images come out flat grey; only the timing is meaningful."""
    outputs = [(o.name, o.shape) for o in model.sessions[function].get_outputs()]

    def run_batch(inputs: Tensors) -> Tensors:
        rows = next(iter(inputs.values())).shape[0]
        time.sleep((fixed_ms + per_row_ms * rows) / 1000.0)
        return {name: np.zeros([rows, *(d if isinstance(d, int) else 1 for d in shape[1:])], np.float32)
                for name, shape in outputs}

    return run_batch


class Engine:
    def __init__(self, registry: Registry, config: Config):
        self.registry = registry
        self.config = config
        self.batchers: dict[str, ContinuousBatcher] = {}
        for model in registry.models.values():
            for function in model.sessions:
                key = f"{model.name}.{function}"
                runner = (session_runner(model, function) if config.simulated_cost_ms is None
                          else simulated_runner(model, function, *config.simulated_cost_ms))
                self.batchers[key] = ContinuousBatcher(key, runner, max_batch=config.max_batch,
                                                       gather_ms=config.gather_ms, order=config.queue_order,
                                                       batch_fill=config.batch_fill)
        self.gmm = load_gmm(registry.models["gmm"])
        self.styles = load_styles(registry.models["style"])  # built-in style -> feature mean, std (40, 1, 1)
        text = registry.models["text"]
        self.tokenizer = Tokenizer.from_file(str(text.directory / text.manifest.tokenizer_file))
        self.tokenizer.enable_truncation(text.manifest.max_tokens)
        self._prompt_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        with np.load(text.directory / text.manifest.themes_file) as themes:
            self.theme_vectors = themes["embeddings"].astype(np.float32)  # (captions, 384), unit norm
            self.theme_classes = themes["class_id"]
        # request-level batching (the benchmark's comparison): whole sampling loops in cohorts
        self.cohorts = CohortGate() if config.diffusion_batching == "request" else None

    def manifest(self, model: str) -> Manifest:
        return self.registry.manifest(model)

    async def generate_gan(self, z: np.ndarray, class_id: np.ndarray) -> np.ndarray:
        """(N, 128) noise + (N,) classes -> (N, 3, 32, 32) images in [-1, 1]."""
        out = await self.batchers["dcgan.generate"].submit({"z": z, "class_id": class_id})
        return out["image"]

    async def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, 32, 32) in [-1, 1] -> posterior mean and log-variance, (N, 4, 8, 8) each."""
        out = await self.batchers["vae.encode"].submit({"image": images})
        return out["mean"], out["logvar"]

    async def decode(self, latents: np.ndarray) -> np.ndarray:
        """(N, 4, 8, 8) scaled latents -> (N, 3, 32, 32) images in [-1, 1]."""
        out = await self.batchers["vae.decode"].submit({"latent": latents.astype(np.float32)})
        return out["image"]

    async def denoise(self, latent: np.ndarray, timestep: np.ndarray, class_id: np.ndarray,
                      text_embedding: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        """eps for each row; rows with guidance != 1 also run unconditionally in the same batch and
        combine as eps_u + w (eps_c - eps_u) (Ho & Salimans 2022, eq. 6)."""
        guided = guidance != 1.0  # (N,)
        null_class = self.manifest("diffusion").null_class
        inputs = {
            "latent": np.concatenate([latent, latent[guided]]).astype(np.float32),
            "timestep": np.concatenate([timestep, timestep[guided]]).astype(np.float32),
            "class_id": np.concatenate([class_id, np.full(guided.sum(), null_class)]).astype(np.int64),
            "text_embedding": np.concatenate([text_embedding, np.zeros_like(text_embedding[guided])]
                                             ).astype(np.float32),
        }
        eps = (await self.batchers["diffusion.denoise"].submit(inputs))["eps"]
        conditional, unconditional = eps[: len(latent)], eps[len(latent):]
        w = guidance[guided][:, None, None, None].astype(np.float32)
        conditional[guided] = unconditional + w * (conditional[guided] - unconditional)
        return conditional

    async def upscale(self, tiles: np.ndarray) -> np.ndarray:
        """(N, 3, 32, 32) in [-1, 1] -> (N, 3, 128, 128) in [-1, 1]: generated images and uploads' tiles
        share the upscaler's runs."""
        out = await self.batchers["sr.upscale"].submit({"image": tiles.astype(np.float32)})
        return out["upscaled"]

    async def style_encode(self, tiles: np.ndarray) -> np.ndarray:
        """(N, 3, 192, 192) in [-1, 1] -> (N, 40, 24, 24) style-encoder features (service/style.py's tiles)."""
        out = await self.batchers["style.encode"].submit({"image": tiles.astype(np.float32)})
        return out["features"]

    async def style_decode(self, tiles: np.ndarray) -> np.ndarray:
        """(N, 40, 24, 24) renormalised features -> (N, 3, 192, 192) in [-1, 1]."""
        out = await self.batchers["style.decode"].submit({"features": tiles.astype(np.float32)})
        return out["image"]

    async def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, 384) unit vectors; repeated prompts come from a small LRU cache."""
        missing = sorted({p for p in prompts if p not in self._prompt_cache})
        if missing:
            encodings = self.tokenizer.encode_batch(missing)
            width = max(len(e.ids) for e in encodings)
            ids = np.zeros((len(missing), width), np.int64)
            mask = np.zeros((len(missing), width), np.int64)
            for row, encoding in enumerate(encodings):
                ids[row, : len(encoding.ids)] = encoding.ids
                mask[row, : len(encoding.ids)] = encoding.attention_mask
            out = await self.batchers["text.embed"].submit({"input_ids": ids, "attention_mask": mask})
            for prompt, vector in zip(missing, out["sentence_embedding"]):
                self._remember(prompt, vector)
        return np.stack([self._prompt_cache[p] for p in prompts]).astype(np.float32)

    def _remember(self, prompt: str, vector: np.ndarray) -> None:
        self._prompt_cache[prompt] = vector
        self._prompt_cache.move_to_end(prompt)
        while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
            self._prompt_cache.popitem(last=False)

    def sample_gmm(self, class_ids: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        """(N,) classes -> (N, 4, 8, 8) latents from the class's mixture, one generator per image."""
        latents = []
        for class_id, rng in zip(class_ids, rngs):
            members = np.flatnonzero(self.gmm["component_class"] == class_id)
            weights = self.gmm["weights"][members].astype(np.float64)
            component = members[rng.choice(len(members), p=weights / weights.sum())]
            noise = rng.standard_normal(self.gmm["means"].shape[1]).astype(np.float32)
            latents.append(self.gmm["means"][component] + self.gmm["cholesky"][component].astype(np.float32) @ noise)
        return np.stack(latents).reshape(len(latents), *self.manifest("vae").latent_shape)

    async def warm_up(self) -> None:
        """Runs of every function at a few sizes, one at a time, twice: the first pass pays ORT's lazy set-up
        for each shape (so the first client does not), and the second gives each batcher's cost model clean
        measurements at small and full batches to start from."""
        for _ in range(2):
            for batcher in self.batchers.values():
                batcher.cost = RunCost()
            await self._run_every_function_at_a_few_sizes()
        self._prompt_cache.clear()

    async def _run_every_function_at_a_few_sizes(self) -> None:
        rng = np.random.default_rng(0)
        diffusion, latent_shape = self.manifest("diffusion"), self.manifest("vae").latent_shape
        for rows in sorted({1, min(8, self.config.max_batch), self.config.max_batch}):
            latent = rng.standard_normal((rows, *latent_shape)).astype(np.float32)
            classes = np.arange(rows) % len(self.manifest("dcgan").classes)
            await self.generate_gan(rng.standard_normal((rows, self.manifest("dcgan").z_dim)).astype(np.float32),
                                    classes)
            await self.decode(latent)
            await self.encode(np.zeros((rows, 3, 32, 32), np.float32))
            # at most 8 rows: 64 upscales cost seconds on a loaded CPU, and the cost model fits its slope from 1 and 8
            await self.upscale(np.zeros((min(rows, 8), 3, 32, 32), np.float32))
            # a style tile costs ~30 upscales; 1 and 2 tiles give the cost model its slope
            features = await self.style_encode(np.zeros((min(rows, 2), 3, 192, 192), np.float32))
            await self.style_decode(features)
            await self.denoise(latent, np.full(rows, 0.5, np.float32), classes,
                               np.zeros((rows, diffusion.text_dim), np.float32), np.ones(rows, np.float32))
            self._prompt_cache.clear()
            # a request embeds one prompt; 64 prompts cost seconds on a CPU (fp16 graph), for no information
            await self.embed_text([f"warm up {i}" for i in range(min(rows, 8))])

    def stats(self) -> dict:
        return {key: {"runs": b.runs, "rows": b.rows, "rows_per_run": round(b.rows / b.runs, 2) if b.runs else None,
                      "queued_rows": b.queued_rows, "rows_cancelled": b.rows_cancelled,
                      "cost_ms": {"fixed": round(b.cost.fixed * 1e3, 4), "per_row": round(b.cost.per_row * 1e3, 4)}}
                for key, b in self.batchers.items()}

    async def stop(self) -> None:
        await asyncio.gather(*(b.stop() for b in self.batchers.values()))
