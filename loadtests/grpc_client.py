"""OIP v2 over gRPC inside Locust: a channel whose interceptor reports every call as a Locust request
event, so gRPC rows share one stats table (and one SLO gate) with HTTP. Triton's own generated stubs
(`tritonclient.grpc.service_pb2`) build the messages: the standard `inference.GRPCInferenceService`,
nothing of Atelier's code.

Import only inside Locust (it patches grpc for gevent). The locustfile's OipGrpcUser uses it:

    .venv/bin/python -m loadtests.run http://127.0.0.1:3000 --tags oip-grpc --users 2 --run-time 20s
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import grpc
import grpc.experimental.gevent as grpc_gevent
from tritonclient.grpc import service_pb2

from loadtests.workload import REFUSED_SUFFIX, image_bytes

grpc_gevent.init_gevent()  # grpc's own threads would block Locust's gevent loop otherwise

PROTOCOL = "oip-grpc"
MAX_MESSAGE_BYTES = 1 << 20  # the service's bound on a gRPC message (docs/PROTOCOLS.md)
# Codes that are the server's fault (the gRPC side of HTTP 5xx); the SLO gate counts them apart.
SERVER_ERROR_CODES = ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED")


class ReportingInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Times each unary call and fires Locust's request event for it, named from the request itself
    (`ModelInfer <model>`, plus ` [<priority>]` when the call carries one). RESOURCE_EXHAUSTED is
    admission's refusal: a success under the ` [refused]` name, as HTTP 429s are."""

    def __init__(self, request_event):
        self.request_event = request_event

    def intercept_unary_unary(self, continuation, client_call_details, request):
        started = time.perf_counter()
        call = continuation(client_call_details, request)
        name = row_name(client_call_details.method, request)
        exception, length = None, 0
        try:
            response = call.result()
            length = response.ByteSize()
            exception = check_images(request, response)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                name += REFUSED_SUFFIX
            else:
                exception = RuntimeError(f"gRPC {error.code().name}: {(error.details() or '')[:160]}")
        self.request_event.fire(request_type=PROTOCOL, name=name, response_length=length, response=None,
                                response_time=(time.perf_counter() - started) * 1000, context={},
                                exception=exception)
        return call


def row_name(method: str, request) -> str:
    name = method.rsplit("/", 1)[-1]
    if isinstance(request, service_pb2.ModelInferRequest):
        name += f" {request.model_name}"
        if "priority" in request.parameters:
            name += f" [{request.parameters['priority'].string_param}]"
    return name


def check_images(request, response) -> Exception | None:
    """An answer must hold one 32x32 RGB image per seed row."""
    if not isinstance(request, service_pb2.ModelInferRequest):
        return None
    expected = image_bytes(request.inputs[0].shape[0])
    got = len(response.raw_output_contents[0]) if response.raw_output_contents else 0
    return None if got == expected else ValueError(f"image tensor of {got} bytes, expected {expected}")


def open_channel(http_url: str, grpc_port: int, request_event) -> grpc.Channel:
    """A channel to the gRPC port on the host of the URL under test, and no other host; TLS when the URL
    is https."""
    parts = urlsplit(http_url)
    target = f"{parts.hostname}:{grpc_port}"
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(), options) if parts.scheme == "https"
               else grpc.insecure_channel(target, options))
    return grpc.intercept_channel(channel, ReportingInterceptor(request_event))


def infer_request(model: str, seeds: list[int], prompts: list[str],
                  parameters: dict) -> service_pb2.ModelInferRequest:
    """A ModelInfer request with raw tensor contents, as tritonclient sends them: `seed` INT64 [N] and,
    when given, `prompt` BYTES [N] (each element a 4-byte little-endian length, then the UTF-8 bytes)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="seed", datatype="INT64", shape=[len(seeds)])  # raw contents: inputs' order
    request.raw_input_contents.append(b"".join(s.to_bytes(8, "little") for s in seeds))
    if prompts:
        request.inputs.add(name="prompt", datatype="BYTES", shape=[len(prompts)])
        encoded = [p.encode() for p in prompts]
        request.raw_input_contents.append(b"".join(len(e).to_bytes(4, "little") + e for e in encoded))
    for key, value in parameters.items():
        if isinstance(value, str):
            request.parameters[key].string_param = value
        elif isinstance(value, float):
            request.parameters[key].double_param = value
        else:
            request.parameters[key].int64_param = value
    return request
