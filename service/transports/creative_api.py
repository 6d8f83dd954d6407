"""The creative tools over JSON (service/creative.py): regenerate a genome, breed genomes, interpolate
between two seeds or genomes, and interactive sessions that learn from scores. Each route decodes its
body and tokens, plans one-image requests with `creative`, runs them inside the core's admission
(`core.admitted`, so they are priced and batched like any request) and answers PNGs with provenance,
each with its genome.

    curl -s localhost:3000/v1/interpolate -H 'content-type: application/json' \
         -d '{"model": "dcgan", "class": "Animals & Nature", "seeds": [3, 9], "frames": 8}'
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from service import creative, genomes, pipelines, rules
from service.errors import InvalidInput
from service.server import ServingCore, animation_bytes, generate_rows
from service.transports.bodies import ModelName, PriorityName, Prompt, SamplerName, bounded
from service.transports.context import core_of
from service.transports.json_api import GeneratedImage

router = APIRouter(prefix="/v1", tags=["Creative tools"])

GenomeToken = Annotated[str, Field(min_length=1, max_length=rules.MAX_TOKEN_CHARS,
                                   description="a genome token from any Atelier route")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

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
    frames: Annotated[int, bounded(rules.FRAMES)] = rules.FRAMES.default
    frame_ms: Annotated[int, bounded(rules.FRAME_MS)] = rules.FRAME_MS.default
    animation: Literal["webp", "gif"] = "webp"
    sheet: Annotated[bool, Field(description="also return the frames side by side as one PNG")] = False


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
                    results: Sequence[pipelines.Generated]) -> list[GeneratedImage]:
    """Each result as a PNG with provenance and its genome."""
    answered = []
    for request, generated in zip(requests, results):
        genome = creative.genomes_of(request, generated)[0]
        image = GeneratedImage.of((await core.encode(generated))[0])
        answered.append(image.model_copy(update={"genome": genomes.seal_genome(core.signer, genome)}))
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
    """K frames from one seed or genome to another, as PNGs and as an animation."""
    core = core_of(request)
    if (body.seeds is None) == (body.genomes is None):
        raise InvalidInput("give either seeds (two seeds, with model and condition) or genomes (two genome tokens)")
    if body.seeds is not None:
        endpoints = [body.to_request(core, seed) for seed in body.seeds]
        for endpoint in endpoints:
            core.check(endpoint)
    else:
        endpoints = genome_requests(core, body.genomes, body.priority)
    frames = await creative.interpolation_frames(core.engine, *endpoints, body.frames)
    results = await run(core, "/v1/interpolate", frames)
    pixels = [generated.images[0] for generated in results]
    return InterpolateResponse(
        model=results[0].model, version=results[0].version, images=await images_of(core, frames, results),
        animation_format=body.animation,
        animation_base64=base64.b64encode(animation_bytes(pixels, body.frame_ms, body.animation)).decode(),
        sheet_png_base64=base64.b64encode(await core.encode_sheet(results)).decode() if body.sheet else None)


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
