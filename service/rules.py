"""The request rules, once: model and sampler names, and every bound and default a client meets.

Every face of the API derives from this table: the JSON API's and the OpenAI routes' pydantic
bodies (`transports/bodies.py`), the OIP parameter table (`transports/oip.py`) and
`pipelines.validate`, which checks every plain request whatever transport it came by. A bound
changed here changes the OpenAPI schema, the OIP metadata and the check together.

    .venv/bin/python -c "from service import rules; print(rules.STEPS, rules.SAMPLERS)"
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import InvalidInput

# The image models a client may name (the text encoder is an internal function, not a model to call).
MODELS = ("dcgan", "vae", "gmm", "diffusion")
# Sampler names, in the order the docs list them; samplers.SAMPLERS implements exactly these.
SAMPLERS = ("dpmpp_2m", "euler", "ddim", "ddpm")
# interactive: a person waits (the default); batch: bulk jobs that fill the rows interactive work leaves
# free and are refused first under overload (service/batcher.py, service/admission.py)
PRIORITIES = ("interactive", "batch")
DEFAULT_PRIORITY = "interactive"
DEFAULT_MODEL = "diffusion"
DEFAULT_SAMPLER = "dpmpp_2m"  # the best images in few steps on the committed denoiser (docs/MODELS.md)
MAX_MODEL_NAME_CHARS = 64
MAX_PROMPT_CHARS = 500  # MiniLM truncates at 128 tokens; 500 characters leaves room for long themes


@dataclass(frozen=True)
class Bound:
    """A numeric request field: inclusive bounds, the default a client gets, and what it means."""

    name: str
    minimum: int | float
    maximum: int | float
    default: int | float | None
    description: str

    def check(self, value: int | float) -> None:
        if not self.minimum <= value <= self.maximum:
            raise InvalidInput(f"{self.name} must be between {self.minimum:g} and {self.maximum:g}, got {value!r}")


N = Bound("n", 1, 16, 1, "images in the request")
# seed + i is image i's seed and must stay a valid int64 for every image of the largest request
SEED = Bound("seed", 0, 2**63 - 1 - N.maximum, None, "image i uses seed + i; random when absent")
STEPS = Bound("steps", 1, 250, 30, "sampler steps (diffusion)")
GUIDANCE = Bound("guidance", 0.0, 20.0, 2.0, "classifier-free guidance scale (diffusion)")
ETA = Bound("eta", 0.0, 1.0, 0.0, "DDIM stochasticity (diffusion)")
STRENGTH = Bound("strength", 0.0, 1.0, 1.0, "fraction of the schedule redrawn from an input image (SDEdit)")
# OpenAI edits without a mask, and variations: redraw most details (with Karras sigmas a crude sketch's layout
# survives only below ~0.35, and 0.6 gives what 1 does: docs/CREATIVE.md)
IMG2IMG_STRENGTH = 0.6
# Sketch assist (/v1/img2img, OIP's img2img): the strongest redraw that still keeps a crude sketch's coarse
# layout with the default sampler and steps (layout distance 27 where 1 gives 82; docs/CREATIVE.md)
SKETCH_STRENGTH = 0.3

# Streaming progress (transports/streaming.py), diffusion only. A preview costs one VAE decode of the request's
# n latents, batched with other requests' decodes: every 5 steps gives 5 previews over the default 30 steps.
PREVIEW_EVERY = Bound("preview_every", 0, STEPS.maximum, 5, "with stream: a preview image every k sampler steps "
                                                            "(0: none)")
# OpenAI's own bound (its SDK documents 0..3): partial images spread evenly over the steps
PARTIAL_IMAGES = Bound("partial_images", 0, 3, 0, "with stream: partial images before the final one")

# Super-resolution (models/sr, docs/UPSCALE.md): `upscale: 4` runs the generated 32 px images through the 4x
# upscaler (128 px); 1 leaves them as the model drew them. POST /v1/upscale takes an uploaded image of at most
# MAX_UPSCALE_SIDE a side, so its answer is at most 512 px a side (uploads.MAX_RETURN_SIDE).
UPSCALER = "sr"
UPSCALE_FACTORS = (1, 4)
MAX_UPSCALE_SIDE = 128

# Style transfer (service/style.py): a content image up to MAX_STYLE_SIDE a side (a larger upload is scaled
# down to it; MIN_STYLE_SIDE is checked after that) in a built-in style or an uploaded one, which is scaled down
# (never up) to at most STYLE_IMAGE_SIDE on its longer side, the scale the built-in styles were measured at.
STYLE_MODEL = "style"
MAX_STYLE_SIDE = 512
MIN_STYLE_SIDE = 32
STYLE_IMAGE_SIDE = 256
STYLE_STRENGTH = Bound("strength", 0.0, 1.0, 1.0, "1: the style's full feature statistics; 0: the content redrawn")

# The creative tools (service/creative.py): interpolation, breeding, interactive sessions.
# Frames share batched runs; 2 are the endpoints alone, 32 make a one-second loop at 30 fps.
FRAMES = Bound("frames", 2, 32, 8, "frames of an interpolation, both endpoints included")
FRAME_MS = Bound("frame_ms", 20, 2000, 120, "milliseconds per frame of the animation")
PARENTS = Bound("parents", 2, 8, None, "distinct parent genomes of a breeding")
CHILDREN = Bound("children", 1, 16, 4, "children of a breeding (as n bounds a generation)")
MUTATION = Bound("mutation", 0.0, 1.0, 0.2, "share of a child's variance drawn fresh from the prior (0: crossover only)")
# CEM needs a few candidates to pick elites from; 16 keeps a round one ordinary request's size
POPULATION = Bound("population", 4, 16, 8, "candidates per round of an interactive session")
SCORE = Bound("score", -1e6, 1e6, None, "a candidate's score (higher is liked more)")
# A genome with an explicit 256-float latent is ~1.5 kB of base64; a session carries two such vectors
MAX_TOKEN_CHARS = 8192


def check_prompt(prompt: str) -> None:
    if not 0 < len(prompt) <= MAX_PROMPT_CHARS:
        raise InvalidInput(f"prompt must be 1..{MAX_PROMPT_CHARS} characters, got {len(prompt)}")


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise InvalidInput(f"unknown sampler {sampler!r}; available: {', '.join(SAMPLERS)}")


def check_priority(priority: str) -> None:
    if priority not in PRIORITIES:
        raise InvalidInput(f"unknown priority {priority!r}; available: {', '.join(PRIORITIES)}")


def check_upscale(factor: int) -> None:
    if factor not in UPSCALE_FACTORS:
        raise InvalidInput(f"upscale must be one of {', '.join(map(str, UPSCALE_FACTORS))}, got {factor!r}")


def check_upscale_size(width: int, height: int) -> None:
    if max(width, height) > MAX_UPSCALE_SIDE:
        raise InvalidInput(f"an image to upscale is at most {MAX_UPSCALE_SIDE} px a side (the answer is 4x that), "
                           f"got {width}x{height}")


def check_stream(stream: bool, previews: Bound, value: int | None) -> None:
    """A preview setting (`preview_every`, OpenAI's `partial_images`) within its bounds, and only on a stream:
    a request that will not stream would silently ignore it."""
    if value is None:
        return
    if not stream:
        raise InvalidInput(f"{previews.name} needs stream: true (previews are sent only on an event stream)")
    previews.check(value)
