"""What the load-test users ask for: prompts, step mixes and request bodies for every protocol, and the
names their rows get in Locust's stats. Plain Python (no Locust, no gevent), so tests and `run.py` can
import it without monkeypatching anything.

    .venv/bin/python -c "import random; from loadtests.workload import diffusion_body as d; print(d(random.Random(0), (10,)))"
"""

from __future__ import annotations

import random

# Themes a user of an emoji generator would type; mixed lengths, so text batches see mixed token counts.
PROMPTS = (
    "a red heart", "a happy cat", "a slice of pizza", "a future city", "a rocket", "a smiling face with sunglasses",
    "a green tree", "a cup of coffee", "a soccer ball", "a flag with stars", "a crying face", "a blue car",
    "an old key", "a birthday cake with candles", "a mountain at night", "a dancing person",
)
SAMPLERS = ("dpmpp_2m", "euler", "ddim")
CLASS_COUNT = 9  # emoji groups 0..8 (GET /v1/models lists their names)
SEED_LIMIT = 2**62  # well inside the service's bound (2^63 - 16), whatever n is

# Rows of admitted requests are named "<protocol> <route>"; a refusal by admission (429 with Retry-After,
# or gRPC RESOURCE_EXHAUSTED) is reported as a success under the same name plus this suffix, so it neither
# counts as an error nor pulls the admitted requests' latency percentiles down.
REFUSED_SUFFIX = " [refused]"
PRIORITIES = ("interactive", "batch")


def parse_steps(text: str) -> tuple[int, ...]:
    """'10,20,30' -> (10, 20, 30): the diffusion step counts users draw from, each in 1..250."""
    steps = tuple(int(part) for part in text.split(",") if part.strip())
    if not steps or not all(1 <= s <= 250 for s in steps):
        raise ValueError(f"steps must be a comma-separated list of 1..250, got {text!r}")
    return steps


def parse_mix(text: str, known: tuple[str, ...]) -> dict[str, int]:
    """'gan=3,oip-grpc=1' -> {'gan': 3, 'oip-grpc': 1}: user weights by short name; 0 drops a user."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in known or not weight.isdigit():
            raise ValueError(f"mix entries are NAME=WEIGHT with NAME one of {', '.join(known)}; got {part!r}")
        mix[name] = int(weight)
    return mix


def gan_burst_body(rng: random.Random, n: int = 4) -> dict:
    """A gallery page's worth of class-conditional GAN images."""
    return {"model": "dcgan", "class": rng.randrange(CLASS_COUNT), "n": n, "seed": rng.randrange(SEED_LIMIT)}


def diffusion_body(rng: random.Random, steps: tuple[int, ...], n: int = 1) -> dict:
    """Text-conditioned diffusion with a step count and sampler drawn per request, so step-level batches mix."""
    return {"model": "diffusion", "prompt": rng.choice(PROMPTS), "n": n, "seed": rng.randrange(SEED_LIMIT),
            "steps": rng.choice(steps), "guidance": 3.0, "sampler": rng.choice(SAMPLERS)}


def openai_generation_args(rng: random.Random, steps: tuple[int, ...]) -> dict:
    """Keyword arguments for the OpenAI SDK's `images.generate` (Atelier's settings travel in extra_body)."""
    return {"model": "diffusion", "prompt": rng.choice(PROMPTS), "n": 1, "size": "32x32",
            "response_format": "b64_json",
            "extra_body": {"seed": rng.randrange(SEED_LIMIT), "steps": rng.choice(steps)}}


def openai_edit_args(rng: random.Random, steps: tuple[int, ...], image_png: bytes) -> dict:
    """Keyword arguments for the SDK's `images.edit` without a mask: img2img (SDEdit) of `image_png`."""
    return {"image": ("input.png", image_png, "image/png"), "model": "diffusion", "prompt": rng.choice(PROMPTS),
            "n": 1, "size": "32x32", "response_format": "b64_json",
            "extra_body": {"seed": rng.randrange(SEED_LIMIT), "steps": rng.choice(steps), "strength": 0.6}}


def oip_http_body(model: str, seeds: list[int], prompts: list[str], parameters: dict) -> dict:
    """An OIP v2 HTTP infer request with JSON tensors in and the image back as binary (tritonclient's way)."""
    inputs = [{"name": "seed", "shape": [len(seeds)], "datatype": "INT64", "data": seeds}]
    if prompts:
        inputs.append({"name": "prompt", "shape": [len(prompts)], "datatype": "BYTES", "data": prompts})
    return {"inputs": inputs, "outputs": [{"name": "image", "parameters": {"binary_data": True}}],
            "parameters": parameters}


def with_priority(body: dict, priority: str | None) -> dict:
    """The body with Atelier's `priority` field when priorities are on (a server without it refuses the field)."""
    return {**body, "priority": priority} if priority else body


def image_bytes(n: int) -> int:
    """Bytes of n 32x32 RGB uint8 images, the size an OIP answer's `image` tensor must have."""
    return n * 32 * 32 * 3
