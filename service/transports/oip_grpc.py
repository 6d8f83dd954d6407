"""Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on `grpc.aio`.

A thin transport over `oip.py`, like `oip_http.py`: decode the protobuf into `oip.InferRequest`,
call `oip.infer`, encode the answer (always as `raw_output_contents`). Inputs may come as typed
`contents` or as `raw_input_contents`. The server runs in the HTTP server's event loop, started and
stopped by Atelier's start-up and shutdown hooks, so its requests join the same Engine batches as
HTTP ones. Errors leave as gRPC status codes from errors.py's one table. With ATELIER_API_KEY set,
every RPC but ServerLive and ServerReady needs the metadata `authorization: Bearer <key>`.

    .venv/bin/python -c "import tritonclient.grpc as g; \
print(g.InferenceServerClient('localhost:8001').get_model_metadata('dcgan'))"
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import socket
import sys
import time

import grpc
from google.protobuf.message import DecodeError

from service import logs
from service.admission import ARRIVED
from service.errors import AtelierError, InvalidInput, grpc_code, public_message
from service.protos import grpc_service_pb2 as pb
from service.protos import grpc_service_pb2_grpc as pb_grpc
from service.server import ServingCore
from service.transports import oip

log = logging.getLogger(__name__)
access_log = logging.getLogger("atelier.access")

SERVICE_NAME = "inference.GRPCInferenceService"
SERVICE = f"/{SERVICE_NAME}/"
ROUTE = SERVICE + "ModelInfer"  # the metrics label
OPEN_METHODS = (SERVICE + "ServerLive", SERVICE + "ServerReady")  # probes need no key, as over HTTP
# Same bound as an HTTP body (oip_http.MAX_BODY_BYTES): gRPC answers RESOURCE_EXHAUSTED beyond it.
MAX_MESSAGE_BYTES = 1 << 20
# On shutdown new RPCs are refused at once; running ones get this long to finish (a CPU diffusion
# request takes seconds) before they are cancelled.
SHUTDOWN_GRACE_SECONDS = 10.0

# datatype -> the InferTensorContents field holding its typed values (FP16 has none: raw only)
CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def answers_with_status(method):
    """An AtelierError leaves as its table's gRPC code and message; anything else as INTERNAL. As over
    HTTP, every call gets a request id (the client's `x-request-id` metadata, if usable), sent back as
    initial metadata and carried by its JSON access line and any error logged while serving it."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        offered = dict(context.invocation_metadata() or ()).get("x-request-id")
        logs.REQUEST_ID.set(logs.request_id(offered if isinstance(offered, str) else None))
        await context.send_initial_metadata((("x-request-id", logs.REQUEST_ID.get()),))
        started, code = time.perf_counter(), grpc.StatusCode.OK
        ARRIVED.set(started)
        try:
            if isinstance(request, Undecodable):
                raise InvalidInput(f"the request is not a valid {request.message_name} protobuf message")
            return await method(self, request, context)
        except asyncio.CancelledError:  # the client went away, or the server is shutting down
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:
            if not isinstance(error, AtelierError):
                log.exception("unhandled error in %s", method.__name__)
            code = grpc_code(error)
            await context.abort(code, public_message(error))
        finally:
            access_log.info("gRPC %s %s", method.__name__, code.name,
                            extra={"method": method.__name__, "status": code.name,
                                   "ms": round((time.perf_counter() - started) * 1000, 1)})

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: ServingCore, server_version: str):
        self.core = core
        self.server_version = server_version

    @answers_with_status
    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @answers_with_status
    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready)

    @answers_with_status
    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=oip.model_ready(self.core, request.name, request.version))

    @answers_with_status
    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**oip.server_metadata(self.server_version))

    @answers_with_status
    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:
        metadata = oip.model_metadata(self.core, request.name, request.version)
        tensors = [[pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                    for s in specs] for specs in (metadata.inputs, metadata.outputs)]
        return pb.ModelMetadataResponse(name=metadata.name, versions=metadata.versions, platform=metadata.platform,
                                        inputs=tensors[0], outputs=tensors[1])

    @answers_with_status
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        # a client that goes away cancels this task, and server.generate_rows cancels its rows' remaining steps
        answer = await oip.infer(self.core, decode_request(request), ROUTE, "oip_grpc")
        response = pb.ModelInferResponse(model_name=answer.model, model_version=answer.version, id=answer.id)
        for tensor in answer.outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(oip.raw_bytes(tensor))
        return response


def decode_request(request: pb.ModelInferRequest) -> oip.InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    tensors = []
    for index, tensor in enumerate(request.inputs):
        if raw and tensor.HasField("contents"):
            raise InvalidInput(f"input {tensor.name!r} has typed contents in a request using raw_input_contents")
        if raw:
            tensors.append(oip.tensor_from_raw(tensor.name, tensor.datatype, tensor.shape, raw[index]))
            continue
        oip.dtype_of(tensor.name, tensor.datatype)  # an unknown datatype says so, not "no typed contents"
        if tensor.datatype not in CONTENTS_FIELDS:
            raise InvalidInput(f"input {tensor.name!r}: {tensor.datatype} has no typed contents; use raw_input_contents")
        values = getattr(tensor.contents, CONTENTS_FIELDS[tensor.datatype])
        tensors.append(oip.tensor_from_values(tensor.name, tensor.datatype, tensor.shape, values))
    return oip.InferRequest(model=request.model_name, version=request.model_version, id=request.id,
                            inputs=tuple(tensors), parameters=decode_parameters(request.parameters),
                            outputs=tuple(output.name for output in request.outputs))


def decode_parameters(parameters) -> dict[str, oip.Parameter]:
    decoded = {}
    for name, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidInput(f"parameter {name!r} has no value")
        decoded[name] = getattr(parameter, choice)
    return decoded


class Undecodable:
    """What a request whose bytes do not parse as its message becomes, so that the servicer answers it
    INVALID_ARGUMENT: a deserializer that raised would make grpc answer UNKNOWN, naming a Python class."""

    def __init__(self, message_name: str):
        self.message_name = message_name


def tolerant_parser(message_type):
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError:
            return Undecodable(message_type.DESCRIPTOR.name)

    return parse


def method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The service's methods (the generated registration's, with tolerant request parsers)."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_type, response_type = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=tolerant_parser(request_type),
            response_serializer=response_type.SerializeToString)
    return handlers


def http_bind_host(argv: list[str] = sys.argv) -> str | None:
    """The address the worker's HTTP socket is bound to: `bentoml serve --host` binds it and hands each worker
    its file descriptor as `--fd N`. None outside such a worker."""
    try:
        with socket.socket(fileno=os.dup(int(argv[argv.index("--fd") + 1]))) as listener:
            if listener.family in (socket.AF_INET, socket.AF_INET6):
                return listener.getsockname()[0]
    except (ValueError, IndexError, OSError):
        pass
    return None


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every RPC but the health probes unless its metadata carries `authorization: Bearer <key>`."""

    def __init__(self, api_key: str):
        self.api_key = api_key.encode()
        self.refusal = grpc.unary_unary_rpc_method_handler(self.refuse)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        offered = dict(details.invocation_metadata or ()).get("authorization", "")
        token = offered.removeprefix("Bearer ").strip().encode() if isinstance(offered, str) else b""
        if details.method in OPEN_METHODS or hmac.compare_digest(token, self.api_key):
            return await continuation(details)
        return self.refusal

    @staticmethod
    async def refuse(request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")


async def start(core: ServingCore, server_version: str) -> grpc.aio.Server:
    """Serve on config.grpc_host (default: the HTTP server's address) and config.grpc_port, in the running
    (HTTP server's) event loop."""
    api_key = core.config.api_key
    server = grpc.aio.server(interceptors=[BearerTokenInterceptor(api_key)] if api_key else [],
                             options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    handlers = method_handlers(InferenceServicer(core, server_version))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    address = listen_address(core.config.grpc_host or http_bind_host() or "127.0.0.1", core.config.grpc_port)
    server.add_insecure_port(address)
    await server.start()
    log.info("OIP gRPC serving on %s", address)
    return server


async def stop(server: grpc.aio.Server) -> None:
    await server.stop(SHUTDOWN_GRACE_SECONDS)
