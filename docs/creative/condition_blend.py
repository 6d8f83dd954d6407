"""How evenly a diffusion interpolation between two conditions moves: the mean absolute pixel change between
consecutive frames and its max / mean, for a class-to-class and three prompt-to-prompt pairs over 8 seed pairs,
with the frames' condition taken from the nearer endpoint (noise only: what /v1/interpolate did before) or
blended (creative.condition_blend), and for prompts both ways of blending their unit embeddings (slerp, lerp).

    PYTHONPATH=. .venv/bin/python docs/creative/condition_blend.py
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from service import creative, pipelines
from service.config import load_config
from service.engine import Engine
from service.registry import Registry

FRAMES = 8
SEED_PAIRS = [(1, 2), (3, 9), (5, 11), (20, 7), (13, 4), (8, 30), (41, 17), (6, 60)]
PAIRS = {"class 2 -> class 3 (Animals & Nature -> Food & Drink)": ({"class_id": 2}, {"class_id": 3}),
         "prompt 'a red heart' -> 'a green tree'": ({"prompt": "a red heart"}, {"prompt": "a green tree"}),
         "prompt 'a smiling face' -> 'a blue car'": ({"prompt": "a smiling face"}, {"prompt": "a blue car"}),
         "prompt 'a cat' -> 'a pizza slice'": ({"prompt": "a cat"}, {"prompt": "a pizza slice"})}


def noise_only(frames: list[pipelines.GenerateRequest]) -> list[pipelines.GenerateRequest]:
    """The frames as before condition blending: each between frame takes its nearer endpoint's condition."""
    start, end, middle = frames[0], frames[-1], []
    for k, frame in enumerate(frames[1:-1], 1):
        nearer = start if k / (len(frames) - 1) < 0.5 else end
        middle.append(replace(frame, class_id=nearer.class_id, prompt=nearer.prompt, blend=None))
    return [start, *middle, end]


def lerp_text(frames: list[pipelines.GenerateRequest], texts: list[np.ndarray]) -> list[pipelines.GenerateRequest]:
    out = [frames[0]]
    for frame in frames[1:-1]:
        w = frame.blend.weight
        out.append(replace(frame, blend=replace(frame.blend, text_embedding=((1 - w) * texts[0] + w * texts[1])
                                                .astype(np.float32))))
    return [*out, frames[-1]]


def steps_of(results) -> np.ndarray:
    images = np.stack([r.images[0] for r in results]).astype(np.float32)
    return np.abs(np.diff(images, axis=0)).mean(axis=(1, 2, 3))


async def measure(engine: Engine) -> None:
    for name, (a, b) in PAIRS.items():
        variants: dict[str, list[np.ndarray]] = {}
        for seed_a, seed_b in SEED_PAIRS:
            start = pipelines.GenerateRequest(model="diffusion", seed=seed_a, **a)
            end = pipelines.GenerateRequest(model="diffusion", seed=seed_b, **b)
            frames = await creative.interpolation_frames(engine, start, end, FRAMES)
            runs = {"noise only (before)": noise_only(frames), "noise + condition (after)": frames}
            if "prompt" in a:
                texts = [(await pipelines.prompt_embedding(engine, e.prompt))[0] for e in (start, end)]
                runs["noise + condition, text lerp"] = lerp_text(frames, texts)
            for variant, requests in runs.items():
                results = await asyncio.gather(*(pipelines.generate(engine, r) for r in requests))
                variants.setdefault(variant, []).append(steps_of(results))
        print(name)
        for variant, steps in variants.items():
            ratios = [s.max() / s.mean() for s in steps]
            print(f"  {variant:30s} mean step {np.mean([s.mean() for s in steps]):5.2f}  max/mean "
                  f"{np.mean(ratios):.2f} (per seed pair {', '.join(f'{r:.2f}' for r in ratios)})")


def main() -> None:
    config = load_config({})
    engine = Engine(Registry.load(config), config)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(measure(engine))
    finally:
        loop.run_until_complete(engine.stop())


if __name__ == "__main__":
    main()
