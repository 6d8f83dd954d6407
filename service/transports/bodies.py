"""Pydantic request bodies, derived from the one table of request rules (service/rules.py).

Only the edge parses with pydantic; what it yields becomes a plain `pipelines.GenerateRequest`.
The JSON API and the OpenAI routes share `GenerationSettings`, so a setting has one name, one
bound and one default on both, and a seed gives the same image on both.

    .venv/bin/python -c "from service.transports.bodies import GenerationSettings as G; \
print(G.model_json_schema()['properties']['steps'])"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import pipelines, rules
from service.errors import InvalidInput, invalid_request

SamplerName = Literal[rules.SAMPLERS]
PriorityName = Literal[rules.PRIORITIES]


def bounded(bound: rules.Bound, kind: Callable[..., Any] = Field) -> Any:
    """A pydantic Field (or FastAPI `Query`) carrying the rule's bounds and description."""
    return kind(ge=bound.minimum, le=bound.maximum, description=bound.description)


ModelName = Annotated[str, Field(max_length=rules.MAX_MODEL_NAME_CHARS, description=", ".join(rules.MODELS))]
Prompt = Annotated[str, Field(min_length=1, max_length=rules.MAX_PROMPT_CHARS)]


class GenerationSettings(BaseModel):
    """The settings every generating route takes (JSON API, OpenAI routes' extras). Strict in JSON: a number
    is a JSON number ("n": "3", "n": true, "class": true are refused, not coerced); multipart form fields,
    which are text by nature, are parsed with coercion (`parse`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    model: ModelName = rules.DEFAULT_MODEL
    n: Annotated[int, bounded(rules.N)] = rules.N.default
    seed: Annotated[int | None, bounded(rules.SEED)] = rules.SEED.default
    steps: Annotated[int, bounded(rules.STEPS)] = rules.STEPS.default
    guidance: Annotated[float, bounded(rules.GUIDANCE)] = rules.GUIDANCE.default
    sampler: SamplerName = rules.DEFAULT_SAMPLER
    eta: Annotated[float, bounded(rules.ETA)] = rules.ETA.default
    priority: Annotated[PriorityName, Field(description="interactive (a person waits) or batch (bulk work: fills "
                                                        "free rows, refused first under overload)")] = rules.DEFAULT_PRIORITY

    def to_request(self, class_id: int | None, prompt: str | None, **edit: Any) -> pipelines.GenerateRequest:
        return pipelines.GenerateRequest(model=self.model, n=self.n, seed=self.seed, class_id=class_id, prompt=prompt,
                                         steps=self.steps, guidance=self.guidance, sampler=self.sampler, eta=self.eta,
                                         priority=self.priority, **edit)


def parse(model: type[BaseModel], raw: bytes | dict[str, str], what: str = "request"):
    """A body parsed by its pydantic model: JSON bytes as strictly as the model says, form fields (text)
    with coercion to the field's type; a schema failure is InvalidInput (400) naming each field."""
    try:
        return model.model_validate_json(raw) if isinstance(raw, bytes) else model.model_validate(raw, strict=False)
    except ValidationError as error:
        raise invalid_request(error.errors(), what) from None


async def refuse_unknown_query(request: Request) -> None:
    """A router dependency: a query parameter the route does not declare is refused (InvalidInput), not
    ignored, so a misspelt or unsupported setting (`/v1/image.png?eta=1`) is not silently dropped."""
    route = request.scope.get("route")
    declared = {param.alias for param in route.dependant.query_params} if route is not None else set()
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        allowed = ", ".join(sorted(declared)) or "none"
        raise InvalidInput(f"unknown query parameter {', '.join(map(repr, unknown))}; this route takes: {allowed}")
