"""Open Inference Protocol over HTTP: the `/v2` routes, JSON tensors and the binary tensor extension.

A thin transport over `oip.py`: decode the body into `oip.InferRequest`, call `oip.infer`, encode
the answer. Binary tensor data extension (what tritonclient sends by default): the body is the
JSON header (`Inference-Header-Content-Length` bytes) followed by each binary input's bytes in
input order, each input naming its size in `parameters.binary_data_size`; an output is returned
binary when its `parameters.binary_data` (or the request's `binary_data_output`) is true. Errors
are AtelierErrors, which the app's handler (context.py) answers as the protocol's `{"error": "..."}`.

    curl -s localhost:3000/v2/models/dcgan/infer -H 'content-type: application/json' \
         -d '{"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64", "data": [7]}]}'
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from service.errors import InvalidInput, invalid_request
from service.transports import oip
from service.transports.context import client_gone, core_of

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

ROUTE = "/v2/models/{model}/infer"  # the metrics label: templated, so model names cannot explode it
# 16 rows of 500-character prompts fit in ~10 kB; anything near 1 MiB is not a generation request.
# The app (http_app.py) answers 413 past it, from Content-Length before reading the body.
MAX_BODY_BYTES = 1 << 20
HEADER_LENGTH = "Inference-Header-Content-Length"

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr


class InputBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Parameter] = {}
    data: list | None = None  # flat or nested row-major; absent when the input is binary


class OutputBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Parameter] = {}


class InferBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = ""
    parameters: dict[str, Parameter] = {}
    inputs: list[InputBody]
    outputs: list[OutputBody] = []


@router.get("")
async def server_metadata(request: Request) -> dict:
    return oip.server_metadata(request.app.version)


@router.get("/health/live")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready")
async def server_ready(request: Request) -> JSONResponse:
    ready = core_of(request).ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
async def model_metadata(request: Request, model: str, version: str = "") -> dict:
    metadata = oip.model_metadata(core_of(request), model, version)
    return {"name": metadata.name, "versions": list(metadata.versions), "platform": metadata.platform,
            "inputs": [tensor_metadata(spec) for spec in metadata.inputs],
            "outputs": [tensor_metadata(spec) for spec in metadata.outputs],
            "parameters": dict(metadata.parameters)}


def tensor_metadata(spec: oip.TensorSpec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape), "optional": not spec.required,
            "description": spec.description}


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(request: Request, model: str, version: str = "") -> JSONResponse:
    ready = oip.model_ready(core_of(request), model, version)
    return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(request: Request, model: str, version: str = "") -> Response:
    body, binary = split_body(await read_body(request), request.headers.get(HEADER_LENGTH))
    plain = oip.InferRequest(model=model, version=version, id=body.id, inputs=decode_inputs(body.inputs, binary),
                             parameters={k: v for k, v in body.parameters.items() if k != "binary_data_output"},
                             outputs=tuple(output.name for output in body.outputs))
    answer = await oip.infer(core_of(request), plain, ROUTE, "oip_http",
                             disconnected=lambda: client_gone(request))
    return encode_response(answer, body)


async def read_body(request: Request) -> bytes:
    encoding = request.headers.get("content-encoding", "identity")
    if encoding != "identity":
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported; send the request uncompressed")
    return await request.body()  # bounded by the app's max_body_size (http_app.py): 413 past MAX_BODY_BYTES


def split_body(body: bytes, header_length: str | None) -> tuple[InferBody, bytes]:
    """The JSON header, parsed and typed, and the binary tensor data after it."""
    length = len(body)
    if header_length is not None:
        # ASCII digits only ("²".isdigit() holds and int() refuses it), and few: int() refuses 4,300 digits
        if not (header_length.isascii() and header_length.isdigit() and len(header_length) <= 20) \
                or int(header_length) > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {header_length[:32]!r} must be a byte count within the "
                               f"{len(body)}-byte body")
        length = int(header_length)
    try:
        return InferBody.model_validate_json(body[:length]), body[length:]
    except ValidationError as error:
        raise invalid_request(error.errors(), "inference request") from None


def decode_inputs(inputs: list[InputBody], binary: bytes) -> tuple[oip.Tensor, ...]:
    tensors, offset = [], 0
    for item in inputs:
        size = item.parameters.get("binary_data_size")
        if size is None:
            if item.data is None:
                raise InvalidInput(f"input {item.name!r} has neither `data` nor parameters.binary_data_size")
            tensors.append(oip.tensor_from_values(item.name, item.datatype, item.shape,
                                                  flatten(item.name, item.data, item.shape)))
            continue
        if item.data is not None or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {item.name!r}: binary_data_size must be a byte count, without `data`")
        if offset + size > len(binary):
            raise InvalidInput(f"input {item.name!r}: binary_data_size {size} goes beyond the request body "
                               f"({len(binary) - offset} binary bytes left)")
        tensors.append(oip.tensor_from_raw(item.name, item.datatype, item.shape, binary[offset: offset + size]))
        offset += size
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data after the header belong to no input")
    return tuple(tensors)


def flatten(name: str, data: list, shape: list[int]) -> list:
    """Row-major elements of flat or nested JSON `data` (the spec allows both). Nested data must nest
    exactly as `shape` says: ragged rows whose total happens to match are refused, not reflowed."""
    if not any(isinstance(element, list) for element in data):
        return data  # flat: its length is checked against the shape by oip.tensor_from_values
    level = [data]  # the lists at one depth of the nesting
    for depth, size in enumerate(shape):
        if not all(isinstance(part, list) and len(part) == size for part in level):
            raise InvalidInput(f"input {name!r}: nested data does not have shape {shape} (dimension {depth})")
        level = [element for part in level for element in part]
    if any(isinstance(element, list) for element in level):
        raise InvalidInput(f"input {name!r}: nested data is deeper than shape {shape}")
    return level


def encode_response(answer: oip.InferResponse, body: InferBody) -> Response:
    """JSON `data` per output, or binary after the JSON header where the request asked for it."""
    binary_default = body.parameters.get("binary_data_output") is True
    binary_wanted = {output.name: output.parameters.get("binary_data", binary_default) is True
                     for output in body.outputs}
    outputs, chunks = [], []
    for tensor in answer.outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary_wanted.get(tensor.name, binary_default):
            chunks.append(oip.raw_bytes(tensor))
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = tensor.data.tolist()
        outputs.append(entry)
    header = json.dumps({"model_name": answer.model, "model_version": answer.version, "id": answer.id,
                         "outputs": outputs}).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})
