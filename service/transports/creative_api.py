"""The creative tools over JSON (service/creative.py): regenerate a genome, breed genomes, interpolate
between two seeds, genomes or uploaded images, and interactive sessions that learn from scores. Each
route decodes its body and tokens, plans one-image requests with `creative`, runs them inside the core's
admission (`core.admitted`, so they are priced and batched like any request) and answers PNGs with
provenance, each with its genome (none for an image made from an upload, or for a diffusion frame between
two conditions). An interpolation's animation and sprite sheet carry the same provenance as its PNG frames.

    curl -s localhost:3000/v1/interpolate -H 'content-type: application/json' \
         -d '{"model": "dcgan", "class": "Animals & Nature", "seeds": [3, 9], "frames": 8}'
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Literal
from xml.sax.saxutils import quoteattr

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from service import creative, genomes, pipelines, rules, uploads
from service.errors import InvalidInput
from service.server import ServingCore, generate_rows
from service.transports.bodies import ModelName, PriorityName, Prompt, SamplerName, bounded
from service.transports.context import core_of
from service.transports.json_api import GeneratedImage

router = APIRouter(prefix="/v1", tags=["Creative tools"])

GenomeToken = Annotated[str, Field(min_length=1, max_length=rules.MAX_TOKEN_CHARS,
                                   description="a genome token from any Atelier route")]
UploadedImage = Annotated[str, Field(min_length=1, max_length=uploads.MAX_UPLOAD_BASE64_CHARS,
                                     description="a PNG, JPEG or WebP file as base64 (a data: URL prefix is allowed)")]
# IPTC digital source types (the vocabulary C2PA uses): made by a model, or a model's work on a client's image
GENERATED_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
COMPOSITE_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"


class Body(BaseModel):
    # strict as the JSON API's settings: "8", true or 8.0 are not a population of 8 (issue 17)
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    priority: PriorityName = rules.DEFAULT_PRIORITY
    output: Literal["png"] = "png"


class ConditionedBody(Body):
    """What a new image needs besides its starting vector: the model, its condition and settings."""

    model: ModelName = rules.DEFAULT_MODEL
    class_: Annotated[int | str | None, Field(alias="class", description="class id or one of the model's names")] = None
    prompt: Prompt | None = None
    steps: Annotated[int, bounded(rules.STEPS)] = rules.STEPS.default
    guidance: Annotated[float, bounded(rules.GUIDANCE)] = rules.GUIDANCE.default
    sampler: SamplerName = rules.DEFAULT_SAMPLER
    eta: Annotated[float, bounded(rules.ETA)] = rules.ETA.default

    def to_request(self, core: ServingCore, seed: int | None) -> pipelines.GenerateRequest:
        return pipelines.GenerateRequest(model=self.model, seed=seed, class_id=core.class_id(self.model, self.class_),
                                         prompt=self.prompt, steps=self.steps, guidance=self.guidance,
                                         sampler=self.sampler, eta=self.eta, priority=self.priority)


class RegenerateBody(Body):
    genome: GenomeToken


class BreedBody(Body):
    parents: Annotated[list[GenomeToken], Field(description=rules.PARENTS.description)]
    children: Annotated[int, bounded(rules.CHILDREN)] = rules.CHILDREN.default
    mutation: Annotated[float, bounded(rules.MUTATION)] = rules.MUTATION.default
    seed: Annotated[int | None, bounded(rules.SEED)] = Field(None, description="the breeding's own draws; random "
                                                                                "when absent")


class InterpolateBody(ConditionedBody):
    seeds: Annotated[list[Annotated[int, bounded(rules.SEED)]] | None,
                     Field(min_length=2, max_length=2, description="two seeds (this body's condition)")] = None
    genomes: Annotated[list[GenomeToken] | None, Field(min_length=2, max_length=2, description="two genomes")] = None
    images: Annotated[list[UploadedImage] | None,
                      Field(min_length=2, max_length=2, description="two uploaded images, interpolated in the VAE's "
                                                                    "latent space (model vae, the default with images)")] = None
    classes: Annotated[list[int | str | None] | None,
                       Field(min_length=2, max_length=2, description="with seeds: a class for each seed, in place of "
                                                                     "`class` (diffusion blends the two in between)")] = None
    prompts: Annotated[list[Prompt | None] | None,
                       Field(min_length=2, max_length=2, description="with seeds: a prompt for each seed, in place "
                                                                     "of `prompt` (diffusion blends the two in between)")] = None
    frames: Annotated[int, bounded(rules.FRAMES)] = rules.FRAMES.default
    frame_ms: Annotated[int, bounded(rules.FRAME_MS)] = rules.FRAME_MS.default
    animation: Literal["webp", "gif"] = "webp"
    sheet: Annotated[bool, Field(description="also return the frames side by side as one PNG")] = False

    def seed_requests(self, core: ServingCore) -> list[pipelines.GenerateRequest]:
        """The two seeds' requests, each with its own class and prompt when `classes`/`prompts` give them."""
        for single, pair, given in (("class", "classes", self.class_), ("prompt", "prompts", self.prompt)):
            if given is not None and getattr(self, pair) is not None:
                raise InvalidInput(f"give {single} (both seeds) or {pair} (one per seed), not both")
        classes = self.classes or [self.class_] * 2
        prompts = self.prompts or [self.prompt] * 2
        return [replace(self.to_request(core, seed), class_id=core.class_id(self.model, class_), prompt=prompt)
                for seed, class_, prompt in zip(self.seeds, classes, prompts)]


class SessionBody(ConditionedBody):
    seed: Annotated[int | None, bounded(rules.SEED)] = rules.SEED.default
    population: Annotated[int, bounded(rules.POPULATION)] = rules.POPULATION.default


class FeedbackBody(Body):
    session: Annotated[str, Field(min_length=1, max_length=rules.MAX_TOKEN_CHARS)]
    scores: Annotated[list[Annotated[float, bounded(rules.SCORE)]],
                      Field(max_length=rules.POPULATION.maximum, description="one per candidate, higher is liked more")]


class ImagesResponse(BaseModel):
    model: str
    version: str
    ai_generated: bool = True
    images: list[GeneratedImage]


class BreedResponse(ImagesResponse):
    seed: int


class InterpolateResponse(ImagesResponse):
    animation_format: str
    animation_base64: str
    sheet_png_base64: str | None = None


class SessionResponse(ImagesResponse):
    session: str
    round: int


async def run(core: ServingCore, route: str,
              requests: Sequence[pipelines.GenerateRequest]) -> list[pipelines.Generated]:
    """One-image requests admitted together and run concurrently, so they share batched runs."""
    async with core.admitted(route, "json", list(requests)):
        return await generate_rows(core, requests)


async def images_of(core: ServingCore, requests: Sequence[pipelines.GenerateRequest],
                    results: Sequence[pipelines.Generated], with_genomes: bool = True) -> list[GeneratedImage]:
    """Each result as a PNG with provenance and, unless it was made from an upload or blends two conditions
    (an interpolation frame between two classes or prompts), its genome."""
    answered = []
    for request, generated in zip(requests, results):
        image = GeneratedImage.of((await core.encode(generated))[0])
        if with_genomes and request.blend is None:
            genome = genomes.seal_genome(core.signer, creative.genomes_of(request, generated)[0])
            image = image.model_copy(update={"genome": genome})
        answered.append(image)
    return answered


def genome_requests(core: ServingCore, tokens: Sequence[str], priority: str) -> list[pipelines.GenerateRequest]:
    return [creative.request_of(core.engine, genomes.open_genome(core.signer, token), priority) for token in tokens]


@router.post("/regenerate", response_model=ImagesResponse)
async def regenerate(body: RegenerateBody, request: Request) -> ImagesResponse:
    """The image a genome describes, exactly (the same PNG bytes on every call and every replica with
    the same ATELIER_GENOME_KEY)."""
    core = core_of(request)
    plain = genome_requests(core, [body.genome], body.priority)
    results = await run(core, "/v1/regenerate", plain)
    return ImagesResponse(model=results[0].model, version=results[0].version,
                          images=await images_of(core, plain, results))


@router.post("/breed", response_model=BreedResponse)
async def breed(body: BreedBody, request: Request) -> BreedResponse:
    """Children of 2+ parent genomes by crossover and mutation of their starting vectors."""
    core = core_of(request)
    parents = [genomes.open_genome(core.signer, token) for token in body.parents]
    creative.check_parents(parents)
    seed = pipelines.GenerateRequest(seed=body.seed).with_seed().seed
    plain = [creative.request_of(core.engine, parent, body.priority) for parent in parents]
    children = await creative.offspring(core.engine, plain, body.children, body.mutation, seed)
    results = await run(core, "/v1/breed", children)
    return BreedResponse(model=results[0].model, version=results[0].version, seed=seed,
                         images=await images_of(core, children, results))


@router.post("/interpolate", response_model=InterpolateResponse)
async def interpolate(body: InterpolateBody, request: Request) -> InterpolateResponse:
    """K frames from one seed, genome or uploaded image to another, as PNGs and as an animation."""
    core = core_of(request)
    if sum(given is not None for given in (body.seeds, body.genomes, body.images)) != 1:
        raise InvalidInput("give one of seeds (two seeds, with model and condition), genomes (two genome tokens) "
                           "or images (two uploaded images)")
    if body.seeds is None and (body.classes is not None or body.prompts is not None):
        raise InvalidInput("classes and prompts give each of two seeds its condition: they go with seeds")
    if body.images is not None:
        frames, results = await interpolate_uploads(core, body)
    else:
        if body.seeds is not None:
            endpoints = body.seed_requests(core)
            for endpoint in endpoints:
                core.check(endpoint)
        else:
            endpoints = genome_requests(core, body.genomes, body.priority)
        frames = await creative.interpolation_frames(core.engine, *endpoints, body.frames)
        async with core.admitted("/v1/interpolate", "json", frames):
            results = await creative.run_interpolation(frames, lambda rows: generate_rows(core, rows))
    provenance = {**core.provenance(results[0].model), "model": results[0].model, "version": results[0].version,
                  "ai_generated": "true", "frames": [{"seed": r.seeds[0], **r.parameters} for r in results]}
    animation = animation_file([generated.images[0] for generated in results], body.frame_ms, body.animation,
                               provenance)
    return InterpolateResponse(
        model=results[0].model, version=results[0].version,
        images=await images_of(core, frames, results, with_genomes=body.images is None),
        animation_format=body.animation, animation_base64=base64.b64encode(animation).decode(),
        sheet_png_base64=base64.b64encode(await core.encode_sheet(results)).decode() if body.sheet else None)


async def interpolate_uploads(core: ServingCore, body: InterpolateBody) -> tuple[list, list[pipelines.Generated]]:
    """Frames between two uploads through the VAE (`creative.upload_frames`). Each frame records both
    uploads' sha256 and `composite`, and has no genome: a genome cannot carry the client's image."""
    model = body.model if "model" in body.model_fields_set else "vae"
    if model != "vae":
        raise InvalidInput(f"interpolation between uploaded images runs in the VAE's latent space (model 'vae'); "
                           f"got {model!r}")
    # priced before the latents exist: the frames without their vectors cost the same decodes
    planned = [pipelines.GenerateRequest(model="vae", seed=0, priority=body.priority)] * body.frames
    async with core.admitted("/v1/interpolate", "json", planned):
        edits = await uploads.decoded(decoded_uploads, body.images)
        frames = [replace(frame, priority=body.priority) for frame in
                  await creative.upload_frames(core.engine, (edits[0].image, edits[1].image), body.frames)]
        results = await generate_rows(core, frames)
    made_from = {"uploads_sha256": [edit.sha256 for edit in edits], "composite": True}
    return frames, [replace(result, parameters={**result.parameters, **made_from}) for result in results]


def decoded_uploads(images: Sequence[str]) -> list[uploads.Edit]:
    """Each base64 upload through `uploads.decode_edit`, a refusal naming which of them it was: CPU work for
    the upload decoding thread (`uploads.decoded`), off the event loop."""
    edits = []
    for index, text in enumerate(images):
        try:
            edits.append(uploads.decode_edit(uploads.from_base64(text, "image"), None))
        except InvalidInput as error:
            raise InvalidInput(f"images[{index}]: {error}") from None
    return edits


def animation_file(images: Sequence, frame_ms: int, image_format: Literal["webp", "gif"], provenance: dict) -> bytes:
    """The frames as a looping animation that carries the PNG frames' provenance (model, version, each frame's
    seed and parameters: vector or upload sha256s, `composite`): lossless WebP (exact pixels) with it in an
    XMP packet beside the IPTC digital source type, or GIF (at most 256 colours a frame) with it as a comment."""
    described = json.dumps(provenance, sort_keys=True, default=str)
    if image_format == "webp":
        composite = any(frame.get("composite") for frame in provenance["frames"])
        options = {"lossless": True, "quality": 100, "xmp": xmp_packet(described, composite)}
    else:
        options = {"disposal": 1, "comment": described}
    frames = [Image.fromarray(image) for image in images]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=image_format.upper(), save_all=True, append_images=frames[1:], duration=frame_ms,
                   loop=0, **options)
    return buffer.getvalue()


def xmp_packet(provenance_json: str, composite: bool) -> bytes:
    """An XMP packet: IPTC's DigitalSourceType, and the provenance JSON as `atelier:provenance`."""
    source = COMPOSITE_SOURCE if composite else GENERATED_SOURCE
    return (f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
            f'xmlns:atelier="urn:atelier:provenance:1" Iptc4xmpExt:DigitalSourceType="{source}" '
            f'atelier:provenance={quoteattr(provenance_json)}/></rdf:RDF></x:xmpmeta>'
            f'<?xpacket end="w"?>').encode()


@router.post("/sessions", response_model=SessionResponse)
async def start_session(body: SessionBody, request: Request) -> SessionResponse:
    """Round 0 of an interactive session: a population drawn from the model's prior, and the session
    token to send back with their scores."""
    core = core_of(request)
    session = await creative.start_session(core.engine, body.to_request(core, body.seed), body.population)
    return await answer_session(core, "/v1/sessions", session)


@router.post("/sessions/feedback", response_model=SessionResponse)
async def session_feedback(body: FeedbackBody, request: Request) -> SessionResponse:
    """Scores for the candidates of the session's round; answers the next round's population, moved toward
    the best-scored candidates (the cross-entropy method)."""
    core = core_of(request)
    session = creative.open_session(core.signer, core.engine, body.session, body.priority)
    return await answer_session(core, "/v1/sessions/feedback", creative.next_round(session, body.scores))


async def answer_session(core: ServingCore, route: str, session: creative.Session) -> SessionResponse:
    candidates = session.candidates()
    results = await run(core, route, candidates)
    return SessionResponse(model=session.template.model, version=session.version, round=session.round,
                           session=creative.seal_session(core.signer, session),
                           images=await images_of(core, candidates, results))
