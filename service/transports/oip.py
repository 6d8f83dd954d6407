"""Open Inference Protocol (KServe v2), the protocol without its transports.

Each pipeline is an OIP model (`dcgan`, `vae`, `gmm`, `diffusion`, and diffusion's sketch assist as
`img2img` and `inpaint`). The transports, `oip_http.py`
(JSON with the binary tensor extension) and `oip_grpc.py` (protobuf), decode into the plain
`InferRequest` below, call `infer` with the core it needs (as KServe's data plane is handed its
model repository), and encode the `InferResponse` it returns. This module never
sees a header, a JSON body or a protobuf message, and the protocol's rules (which tensors each
model takes, datatypes, shapes, parameters, versions) live here once for both transports.

Tensors (also in each model's metadata and in docs/PROTOCOLS.md); row i of every input makes image i:
| model               | inputs                                                   | output                    |
|---------------------|----------------------------------------------------------|---------------------------|
| dcgan, gmm          | `seed` INT64 [N]; optional `class_id` INT64 [N], `prompt` BYTES [N] | `image` UINT8 [N,32,32,3] |
| diffusion           | the same, plus request parameters steps, guidance, sampler, eta     | `image` UINT8 [N,32,32,3] |
| vae                 | `seed` INT64 [N]                                          | `image` UINT8 [N,32,32,3] |
| img2img             | diffusion's, plus `image` UINT8 [N,H,W,3] and parameter strength    | `image` UINT8 [N,h,w,3]   |
| inpaint             | img2img's, plus `mask` BOOL [N,H,W] (True = repaint)                | `image` UINT8 [N,h,w,3]   |
(h, w: the input's aspect at its size, at most uploads.MAX_RETURN_SIDE a side)

    .venv/bin/python -m pytest tests/test_oip.py -q
"""

from __future__ import annotations

import math
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from service import pipelines, rules, uploads
from service.errors import InvalidInput, ModelNotFound
from service.server import ServingCore, cancel_on, generate_rows
from service.transports import oip_edits

SERVER_NAME = "atelier"
# binary_tensor_data: the HTTP binary extension; parameters: request parameters (steps, guidance...)
EXTENSIONS = ("binary_tensor_data", "parameters")
# Every pipeline runs on onnxruntime graphs; the spec says the platform is information only.
PLATFORM = "onnxruntime_onnx"

# OIP datatype -> numpy dtype. Raw tensor bytes are little-endian, whatever the machine.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
BYTES_LENGTH = struct.Struct("<I")  # a BYTES element on the wire: 4-byte little-endian length, then the bytes

Parameter = bool | int | float | str


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray  # flat, row-major, prod(shape) elements; BYTES: an object array of `bytes`


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 = any size (the batch axis N)
    required: bool
    description: str


@dataclass(frozen=True)
class InferRequest:
    model: str
    inputs: tuple[Tensor, ...]
    version: str = ""  # "" = the version served
    id: str = ""
    parameters: Mapping[str, Parameter] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # () = every output


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: str
    id: str
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, str]  # request parameter -> what it does (HTTP metadata only: gRPC has no field)


SEED = TensorSpec("seed", "INT64", (-1,), True,
                  "one image per element, drawn from its own generator: same seed and parameters, same image")
CLASS_ID = TensorSpec("class_id", "INT64", (-1,), False,
                      "emoji group 0..8 (the model's `classes`); -1 = none (follow the prompt, else a seeded surprise)")
PROMPT = TensorSpec("prompt", "BYTES", (-1,), False,
                    f"UTF-8 theme, up to {rules.MAX_PROMPT_CHARS} characters; empty = none")
IMAGE = TensorSpec("image", "UINT8", (-1, -1, -1, 3), True,
                   f"the image or sketch to start from, RGB row-major (N, height, width, channel), up to "
                   f"{uploads.MAX_UPLOAD_PIXELS} pixels (and the message size limit)")
MASK = TensorSpec("mask", "BOOL", (-1, -1, -1), True, "True where the image is repainted, (N, height, width)")
MODEL_INPUTS: dict[str, tuple[TensorSpec, ...]] = {
    "dcgan": (SEED, CLASS_ID, PROMPT), "gmm": (SEED, CLASS_ID, PROMPT), "vae": (SEED,),
    "diffusion": (SEED, CLASS_ID, PROMPT),
    "img2img": (SEED, CLASS_ID, PROMPT, IMAGE), "inpaint": (SEED, CLASS_ID, PROMPT, IMAGE, MASK),
}
# sketch assist (the JSON API's /v1/img2img and /v1/inpaint) as models of their own: their tensors and
# output size differ from diffusion's, and a model's metadata lists one fixed set; diffusion runs them
EDIT_MODELS = {"img2img": "diffusion", "inpaint": "diffusion"}
DEFAULT_STRENGTH = {"img2img": rules.SKETCH_STRENGTH, "inpaint": rules.STRENGTH.maximum}
NO_CLASS = -1

# Request parameters -> (accepted Python types, what they do), from the request rules. The sampler
# settings are diffusion's (the other models ignore them, as /v1/generate does, so one client can send
# the same request to any model); priority applies to every model.
def _described(bound: rules.Bound) -> str:
    return f"{bound.description}, {bound.minimum:g}..{bound.maximum:g} (default {bound.default:g})"


PARAMETERS: dict[str, tuple[tuple[type, ...], str]] = {
    "steps": ((int,), _described(rules.STEPS)),
    "guidance": ((int, float), _described(rules.GUIDANCE)),
    "sampler": ((str,), f"{', '.join(rules.SAMPLERS)} (default {rules.DEFAULT_SAMPLER})"),
    "eta": ((int, float), _described(rules.ETA)),
    "strength": ((int, float), f"img2img and inpaint: {rules.STRENGTH.description}, 0..1 (default "
                               f"{rules.SKETCH_STRENGTH:g} for img2img, 1 for inpaint): 0 returns the image, 1 "
                               "ignores it"),
    "upscale": ((int,), "4: each image through the 4x super-resolution model, 128 px (the same cascade as "
                        "/v1/generate's upscale: 4); 1 (default): the model's own 32 px; not for img2img and inpaint"),
    "priority": ((str, int), f"{' or '.join(rules.PRIORITIES)} (default {rules.DEFAULT_PRIORITY}), or Triton's "
                              "integer levels (tritonclient's `priority=`): 0 and 1 interactive, 2 and above batch; "
                              "batch work fills free rows and is refused first under overload"),
}
TRITON_FIRST_BATCH_LEVEL = 2  # Triton: lower is more urgent, 0 = unspecified


def server_metadata(version: str) -> dict:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def served_version(core: ServingCore, model: str, version: str = "") -> str:
    """The version of `model` this server runs; ModelNotFound for another model or version."""
    if model not in MODEL_INPUTS:
        raise ModelNotFound(f"unknown model {model!r}; models: {', '.join(MODEL_INPUTS)}")
    served = core.registry.manifest(EDIT_MODELS.get(model, model)).version
    if version and version != served:
        raise ModelNotFound(f"model {model!r} has no version {version!r}; served: {served}")
    return served


def model_ready(core: ServingCore, model: str, version: str = "") -> bool:
    served_version(core, model, version)
    return core.ready


def model_metadata(core: ServingCore, model: str, version: str = "") -> ModelMetadata:
    served = served_version(core, model, version)
    if model in EDIT_MODELS:
        image = TensorSpec("image", "UINT8", (-1, -1, -1, 3), True, "RGB, row-major (N, height, width, channel), "
                           f"at the input image's aspect and size, at most {uploads.MAX_RETURN_SIDE} px a side")
    else:
        size = core.registry.manifest(model).image_size
        image = TensorSpec("image", "UINT8", (-1, -1, -1, 3), True, f"RGB, row-major (N, height, width, channel): "
                           f"{size}x{size}, or {size * pipelines.SCALE}x{size * pipelines.SCALE} with upscale 4")
    parameters = {name: doc for name, (_, doc) in PARAMETERS.items()
                  if name == "priority" or (model == "diffusion" and name not in ("strength", "upscale"))
                  or (name == "upscale" and model not in EDIT_MODELS)
                  or (model in EDIT_MODELS and name != "upscale")}
    return ModelMetadata(model, (served,), PLATFORM, MODEL_INPUTS[model], (image,), parameters)


def element_count(name: str, shape: Sequence[int]) -> int:
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return math.prod(shape)  # exact for any size, unlike a fixed-width numpy product


def dtype_of(name: str, datatype: str) -> np.dtype:
    if datatype not in DATATYPES:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; OIP datatypes: {', '.join(DATATYPES)}")
    return DATATYPES[datatype]


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """A tensor from its raw bytes: flat row-major little-endian elements, or length-prefixed BYTES."""
    dtype, count = dtype_of(name, datatype), element_count(name, shape)
    if datatype == "BYTES":
        return Tensor(name, datatype, tuple(shape), split_bytes_elements(name, raw, count))
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
                           f"got {len(raw)}")
    return Tensor(name, datatype, tuple(shape), np.frombuffer(raw, dtype))


def split_bytes_elements(name: str, raw: bytes, count: int) -> np.ndarray:
    elements, offset = [], 0
    while offset < len(raw) and len(elements) < count:
        if offset + BYTES_LENGTH.size > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (length,) = BYTES_LENGTH.unpack_from(raw, offset)
        offset += BYTES_LENGTH.size
        if offset + length > len(raw):
            raise InvalidInput(f"input {name!r}: a BYTES element of {length} bytes goes beyond the tensor's data")
        elements.append(raw[offset: offset + length])
        offset += length
    if len(elements) != count or offset != len(raw):
        raise InvalidInput(f"input {name!r}: BYTES data does not hold exactly {count} length-prefixed elements")
    out = np.empty(count, object)
    out[:] = elements
    return out


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence) -> Tensor:
    """A tensor from a flat sequence of typed values (JSON `data`, gRPC typed `contents`)."""
    dtype, count = dtype_of(name, datatype), element_count(name, shape)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {count} elements, got {len(values)}")
    accepted = _VALUE_TYPES[dtype.kind]
    if not all(isinstance(v, accepted) and (bool in accepted or not isinstance(v, bool)) for v in values):
        raise InvalidInput(f"input {name!r}: {datatype} elements must be {' or '.join(t.__name__ for t in accepted)}")
    if datatype == "BYTES":
        data = np.empty(count, object)
        data[:] = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
        return Tensor(name, datatype, tuple(shape), data)
    try:
        return Tensor(name, datatype, tuple(shape), np.array(values, dtype))
    except OverflowError:
        raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}") from None


# numpy dtype kind -> Python types a typed value may have (str for JSON BYTES, bytes for gRPC's)
_VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "b": (bool,), "u": (int,), "i": (int,), "f": (int, float), "O": (str, bytes),
}


def raw_bytes(tensor: Tensor) -> bytes:
    """The tensor's raw wire form: what `tensor_from_raw` reads."""
    if tensor.datatype == "BYTES":
        return b"".join(BYTES_LENGTH.pack(len(element)) + element for element in tensor.data)
    return tensor.data.astype(DATATYPES[tensor.datatype], copy=False).tobytes()


def generate_requests(request: InferRequest) -> list[pipelines.GenerateRequest]:
    """One single-image GenerateRequest per row (admission validates them together before any work starts)."""
    tensors = checked_inputs(request)
    n = tensors["seed"].shape[0]
    options = generation_options(request.parameters, request.model)
    edits = edit_options(request.model, tensors) if request.model in EDIT_MODELS else [{}] * n
    rows = []
    for i in range(n):
        class_id = int(tensors["class_id"].data[i]) if "class_id" in tensors else NO_CLASS
        prompt = prompt_text(tensors["prompt"].data[i]) if "prompt" in tensors else None
        rows.append(pipelines.GenerateRequest(model=EDIT_MODELS.get(request.model, request.model), n=1,
                                              seed=int(tensors["seed"].data[i]),
                                              class_id=None if class_id == NO_CLASS else class_id,
                                              prompt=prompt, **options, **edits[i]))
    return rows


def edit_options(model: str, tensors: dict[str, Tensor]) -> list[dict]:
    """Each row's upload for img2img and inpaint as admission plans it (`uploads.planned`): the pixels are
    made into model input once admitted, off the event loop (`with_uploads`)."""
    images, masks = edit_pixels(tensors)
    oip_edits.check_pixels(images, masks)
    planned = {"init_image": uploads.PLANNED_IMAGE, "mask": None if masks is None else uploads.PLANNED_MASK}
    return [planned] * images.shape[0]


def edit_pixels(tensors: dict[str, Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
    """The edit models' inputs as arrays: images (N, H, W, 3) uint8 and masks (N, H, W) bool or None."""
    image = tensors["image"]
    return (image.data.reshape(image.shape),
            tensors["mask"].data.reshape(tensors["mask"].shape) if "mask" in tensors else None)


async def with_uploads(request: InferRequest, rows: list[pipelines.GenerateRequest]) -> list[pipelines.GenerateRequest]:
    """The rows of an img2img or inpaint request with each row's pixels decoded as an upload (`oip_edits`), in
    the upload decoding thread (429 past its queue): the event loop keeps answering while it works."""
    edits = await uploads.decoded(oip_edits.pixel_edits, *edit_pixels({t.name: t for t in request.inputs}))
    return [replace(row, init_image=edit.image, mask=edit.mask, upload_sha256=edit.sha256)
            for row, edit in zip(rows, edits)]


async def generate_edits(core: ServingCore, request: InferRequest,
                         rows: list[pipelines.GenerateRequest]) -> list[pipelines.Generated]:
    return await generate_rows(core, await with_uploads(request, rows))


def checked_inputs(request: InferRequest) -> dict[str, Tensor]:
    """The request's inputs by name, each checked against the model's TensorSpec."""
    specs = {spec.name: spec for spec in MODEL_INPUTS[request.model]}
    tensors: dict[str, Tensor] = {}
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidInput(f"model {request.model!r} has no input {tensor.name!r}; inputs: {', '.join(specs)}")
        if tensor.name in tensors:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        if tensor.datatype != spec.datatype:
            raise InvalidInput(f"input {tensor.name!r} must be {spec.datatype}, got {tensor.datatype}")
        if len(tensor.shape) != len(spec.shape) or any(d not in (-1, got) for d, got in zip(spec.shape, tensor.shape)):
            raise InvalidInput(f"input {tensor.name!r} must have shape {shape_text(spec)}, got {list(tensor.shape)}")
        tensors[tensor.name] = tensor
    missing = [name for name, spec in specs.items() if spec.required and name not in tensors]
    if missing:
        raise InvalidInput(f"missing input {', '.join(map(repr, missing))} (model {request.model!r} needs it)")
    n = tensors["seed"].shape[0]
    if not rules.N.minimum <= n <= rules.N.maximum:
        raise InvalidInput(f"N (the length of 'seed') must be {rules.N.minimum}..{rules.N.maximum}, got {n}")
    if any(tensor.shape[0] != n for tensor in tensors.values()):
        raise InvalidInput(f"every input must have the same length N = {n} (one row per image)")
    return tensors


def shape_text(spec: TensorSpec) -> str:
    """[N], [N, H, W, 3]: the batch axis, then the image's free axes, by name."""
    names = iter(("N", "H", "W"))
    return "[" + ", ".join(next(names) if d == -1 else str(d) for d in spec.shape) + "]"


def generation_options(parameters: Mapping[str, Parameter], model: str) -> dict[str, Parameter]:
    for name, value in parameters.items():
        if name not in PARAMETERS:
            raise InvalidInput(f"unknown parameter {name!r}; parameters: {', '.join(PARAMETERS)}")
        if name == "strength" and model not in EDIT_MODELS:
            raise InvalidInput(f"parameter 'strength' is for the {' and '.join(EDIT_MODELS)} models, not {model!r}")
        if name == "upscale" and model in EDIT_MODELS:
            raise InvalidInput(f"parameter 'upscale' is for the generating models, not {model!r}")
        accepted = PARAMETERS[name][0]
        if not isinstance(value, accepted) or isinstance(value, bool):
            raise InvalidInput(f"parameter {name!r} must be {' or '.join(t.__name__ for t in accepted)}, "
                               f"got {value!r}")
    options = {name: float(value) if float in PARAMETERS[name][0] else value for name, value in parameters.items()}
    if isinstance(options.get("priority"), int):
        options["priority"] = "batch" if options["priority"] >= TRITON_FIRST_BATCH_LEVEL else "interactive"
    if model in EDIT_MODELS:
        options.setdefault("strength", DEFAULT_STRENGTH[model])
    return options


def prompt_text(element: bytes) -> str | None:
    try:
        return element.decode("utf-8") or None
    except UnicodeDecodeError:
        raise InvalidInput("input 'prompt': elements must be UTF-8 text") from None


async def infer(core: ServingCore, request: InferRequest, route: str, protocol: str,
                disconnected: Callable[[], Awaitable[None]] | None = None) -> InferResponse:
    """Run every row concurrently, so they share Engine batches with each other and with every
    other request in the process; `disconnected`, when given, cancels the rows if it completes first."""
    version = served_version(core, request.model, request.version)
    unknown = [name for name in request.outputs if name != "image"]
    if unknown:
        raise InvalidInput(f"model {request.model!r} has no output {unknown[0]!r}; outputs: image")
    rows = generate_requests(request)
    async with core.admitted(route, protocol, rows):
        work = generate_edits(core, request, rows) if request.model in EDIT_MODELS else generate_rows(core, rows)
        generated = await (cancel_on(disconnected(), work) if disconnected else work)
    images = np.concatenate([g.images for g in generated])  # (N, 32, 32, 3) uint8, (N, 128, 128, 3) upscaled
    if request.model in EDIT_MODELS:  # back to the input's aspect and size, as the JSON routes answer, off the loop
        _, height, width, _ = next(tensor.shape for tensor in request.inputs if tensor.name == "image")
        images = await uploads.off_loop(uploads.restore_aspect, images, (width, height))
    return InferResponse(request.model, version, request.id, (Tensor("image", "UINT8", images.shape, images.ravel()),))
