"""Locust users for a served Atelier: every protocol it speaks, in one stats table.

| user (mix name)            | protocol, route                                   | tags               |
|----------------------------|---------------------------------------------------|--------------------|
| JsonGanBurstUser (gan)     | JSON `POST /v1/generate`, dcgan, 3 x 4 images     | json               |
| JsonDiffusionUser (diffusion) | JSON `POST /v1/generate`, diffusion, mixed steps, prompts, samplers | json |
| OpenAIImagesUser (openai)  | the official `openai` SDK: images.generate, images.edit (img2img) | openai, img2img |
| OipHttpUser (oip-http)     | OIP v2 HTTP `POST /v2/models/{model}/infer`       | oip-http           |
| OipGrpcUser (oip-grpc)     | OIP v2 gRPC `ModelInfer` (interceptor-reported)   | oip-grpc           |
| BatchUser (batch)          | JSON `POST /v1/generate`, diffusion, 8 images     | json, batch        |

Rows are named `<protocol> <route> <model>` (Locust's Type column holds the protocol; ` n=4` or ` n=8`
when a request asks for more than one image); an admission refusal (429 with Retry-After, gRPC
RESOURCE_EXHAUSTED) is a success under the same name plus ` [refused]`, any other non-200 is a
failure whose message starts with its status. With
`--atelier-priority on`, every request carries Atelier's `priority` (BatchUser `batch`, the others
`interactive`) and its row name ends in `[<priority>]`.

Options (each also an environment variable): `--atelier-mix gan=2,diffusion=3,...` (the users to run
and their weights; without it, every user at its class's weight), `--atelier-steps 10,20,30`,
`--atelier-pace R` (every user runs R tasks per second, Locust's `constant_throughput`, instead of its
think time: arrival-rate tests), `--atelier-priority on|off`,
`--atelier-grpc-port 8001`, `--atelier-api-key KEY`. `--tags` / `--exclude-tags` pick protocols.
`loadtests/run.py` runs this file headless and gates the result on loadtests/slo.yaml:

    .venv/bin/python -m loadtests.run http://127.0.0.1:3000 --users 6 --run-time 60s
"""

from __future__ import annotations

import io
import logging
import random
import time

import grpc
import openai
from locust import FastHttpUser, User, between, constant_throughput, events, tag, task
from PIL import Image, ImageDraw

from loadtests import grpc_client, workload
from loadtests.workload import REFUSED_SUFFIX

logging.getLogger("httpx2").setLevel(logging.WARNING)  # the openai SDK's client logs every request at INFO
logging.getLogger("httpx").setLevel(logging.WARNING)

HTTP_TIMEOUT_S = 120.0  # beyond the service's own 60 s request timeout, so its 504 is what a slow answer gets


@events.init_command_line_parser.add_listener
def add_atelier_options(parser) -> None:
    parser.add_argument("--atelier-mix", default="", env_var="ATELIER_LOADTEST_MIX",
                        help="the users to run and their weights, e.g. "
                             "gan=2,diffusion=3,openai=2,oip-http=1,oip-grpc=1,batch=1")
    parser.add_argument("--atelier-steps", default="10,20,30", env_var="ATELIER_LOADTEST_STEPS",
                        help="diffusion step counts each request draws from")
    parser.add_argument("--atelier-pace", type=float, default=0.0, env_var="ATELIER_LOADTEST_PACE",
                        help="tasks per second per user (constant_throughput); 0 = think times")
    parser.add_argument("--atelier-priority", choices=("off", "on"), default="off",
                        env_var="ATELIER_LOADTEST_PRIORITY",
                        help="send Atelier's priority field (interactive, batch for BatchUser)")
    parser.add_argument("--atelier-grpc-port", type=int, default=8001, env_var="ATELIER_LOADTEST_GRPC_PORT",
                        help="OIP gRPC port on the host of --host")
    parser.add_argument("--atelier-api-key", default="", env_var="ATELIER_LOADTEST_API_KEY", is_secret=True,
                        help="sent as Authorization: Bearer on every request")


class AtelierHttpUser(FastHttpUser):
    """A FastHttpUser that reports rows under the protocol, and admission refusals apart from errors."""

    abstract = True
    mix_name = ""
    priority = "interactive"
    network_timeout = connection_timeout = HTTP_TIMEOUT_S
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random()
        self.steps = workload.parse_steps(options.atelier_steps)
        self.sent_priority = self.priority if options.atelier_priority == "on" else None
        self.headers = {"authorization": f"Bearer {options.atelier_api_key}"} if options.atelier_api_key else {}

    def post(self, protocol: str, path: str, name: str, body: dict, check) -> None:
        """POST `body` as JSON; `check(response)` returns what is wrong with a 200 answer, or None."""
        body = workload.with_priority(body, self.sent_priority)
        name += f" [{self.sent_priority}]" if self.sent_priority else ""
        with self.client.post(path, json=body, name=name, headers=self.headers, catch_response=True) as response:
            response.request_meta["request_type"] = protocol
            classify(response, check)


def classify(response, check) -> None:
    status = response.status_code
    if status == 429 and response.headers.get("retry-after"):
        response.request_meta["name"] += REFUSED_SUFFIX
        response.success()
    elif status == 200:
        problem = check(response)
        response.failure(problem) if problem else response.success()
    elif status == 429:
        response.failure("HTTP 429 without Retry-After")
    else:
        response.failure(f"HTTP {status}: {error_text(response)}")


def error_text(response) -> str:
    if response.status_code == 0:
        return f"no answer ({type(response.error).__name__}: {response.error})"[:160]
    try:
        error = response.json().get("error", "")
    except ValueError:
        return (response.text or "")[:160]
    return str(error.get("message", error) if isinstance(error, dict) else error)[:160]


def json_images(n: int):
    def check(response) -> str | None:
        got = len(response.json().get("images", []))
        return None if got == n else f"{got} images in the answer, expected {n}"
    return check


def oip_binary_image(n: int):
    """The answer is a JSON header (length in Inference-Header-Content-Length) and the image tensor's bytes."""
    def check(response) -> str | None:
        header = int(response.headers.get("inference-header-content-length") or -1)
        got = len(response.content) - header if header >= 0 else -1
        return None if got == workload.image_bytes(n) else f"image tensor of {got} bytes, expected n={n}"
    return check


class JsonGanBurstUser(AtelierHttpUser):
    """Opens a gallery page: three GAN requests of 4 images back to back, then reads."""

    mix_name = "gan"
    weight = 2

    @tag("json")
    @task
    def gallery_burst(self) -> None:
        for _ in range(3):
            self.post("json", "/v1/generate", "/v1/generate dcgan n=4", workload.gan_burst_body(self.rng, n=4),
                      json_images(4))


class JsonDiffusionUser(AtelierHttpUser):
    mix_name = "diffusion"
    weight = 3

    @tag("json")
    @task
    def prompt_to_image(self) -> None:
        self.post("json", "/v1/generate", "/v1/generate diffusion", workload.diffusion_body(self.rng, self.steps),
                  json_images(1))


class BatchUser(AtelierHttpUser):
    """Bulk work that can wait: 8 diffusion images a request; `priority: batch` when priorities are on."""

    mix_name = "batch"
    priority = "batch"
    weight = 1
    wait_time = between(2.0, 5.0)

    @tag("json", "batch")
    @task
    def bulk_images(self) -> None:
        self.post("json", "/v1/generate", "/v1/generate diffusion n=8",
                  workload.diffusion_body(self.rng, self.steps, n=8), json_images(8))


class OipHttpUser(AtelierHttpUser):
    mix_name = "oip-http"
    weight = 1

    def infer(self, model: str, prompt: bool, parameters: dict) -> None:
        seeds = [self.rng.randrange(workload.SEED_LIMIT)]
        prompts = [self.rng.choice(workload.PROMPTS)] if prompt else []
        priority = {"priority": self.sent_priority} if self.sent_priority else {}
        body = workload.oip_http_body(model, seeds, prompts, {**parameters, **priority})
        name = f"/v2/models/{model}/infer" + (f" [{self.sent_priority}]" if self.sent_priority else "")
        with self.client.post(f"/v2/models/{model}/infer", json=body, name=name, headers=self.headers,
                              catch_response=True) as response:
            response.request_meta["request_type"] = "oip-http"
            classify(response, oip_binary_image(len(seeds)))

    @tag("oip-http")
    @task(2)
    def diffusion(self) -> None:
        self.infer("diffusion", True, {"steps": self.rng.choice(self.steps)})

    @tag("oip-http")
    @task
    def dcgan(self) -> None:
        self.infer("dcgan", True, {})


class OpenAIImagesUser(User):
    """The official `openai` SDK (its own httpx client, the wire format a backend team's code sends),
    timed here and reported as Locust request events."""

    mix_name = "openai"
    weight = 2
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random()
        self.steps = workload.parse_steps(options.atelier_steps)
        self.sent_priority = "interactive" if options.atelier_priority == "on" else None
        self.sdk = openai.OpenAI(base_url=self.host.rstrip("/") + "/v1", max_retries=0, timeout=HTTP_TIMEOUT_S,
                                 api_key=options.atelier_api_key or "unused")
        self.image_png = red_disc_png()

    def on_stop(self) -> None:
        self.sdk.close()

    @tag("openai")
    @task(3)
    def generate(self) -> None:
        self.call("/v1/images/generations diffusion", self.sdk.images.with_raw_response.generate,
                  workload.openai_generation_args(self.rng, self.steps))

    @tag("openai", "img2img")
    @task
    def edit_img2img(self) -> None:
        self.call("/v1/images/edits diffusion", self.sdk.images.with_raw_response.edit,
                  workload.openai_edit_args(self.rng, self.steps, self.image_png))

    def call(self, name: str, method, arguments: dict) -> None:
        if self.sent_priority:
            arguments["extra_body"]["priority"] = self.sent_priority
            name += f" [{self.sent_priority}]"
        started, exception, length = time.perf_counter(), None, 0
        try:
            raw = method(**arguments)
            length = len(raw.content)
            got, expected = len(raw.parse().data), arguments["n"]
            exception = None if got == expected else ValueError(f"{got} images in the answer, expected {expected}")
        except openai.APIStatusError as error:
            if error.status_code == 429 and error.response.headers.get("retry-after"):
                name += REFUSED_SUFFIX
            else:
                exception = RuntimeError(f"HTTP {error.status_code}: {str(error.message)[:160]}")
        except openai.APIConnectionError as error:
            exception = RuntimeError(f"HTTP 0: no answer ({type(error).__name__}: {error})"[:160])
        self.environment.events.request.fire(
            request_type="openai", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=length, response=None, context={}, exception=exception)


class OipGrpcUser(User):
    """OIP v2 over gRPC through Triton's stubs on a channel whose interceptor reports each call."""

    mix_name = "oip-grpc"
    weight = 1
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random()
        self.steps = workload.parse_steps(options.atelier_steps)
        self.priority = {"priority": "interactive"} if options.atelier_priority == "on" else {}
        key = options.atelier_api_key
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self.channel = grpc_client.open_channel(self.host, options.atelier_grpc_port,
                                                self.environment.events.request)
        self.infer = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=grpc_client.service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=grpc_client.service_pb2.ModelInferResponse.FromString)

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, model: str, parameters: dict) -> None:
        request = grpc_client.infer_request(model, [self.rng.randrange(workload.SEED_LIMIT)],
                                            [self.rng.choice(workload.PROMPTS)], {**parameters, **self.priority})
        try:
            self.infer(request, metadata=self.metadata, timeout=HTTP_TIMEOUT_S)
        except grpc.RpcError:
            pass  # already reported by the interceptor, refusals apart from errors

    @tag("oip-grpc")
    @task(2)
    def diffusion(self) -> None:
        self.call("diffusion", {"steps": self.rng.choice(self.steps)})

    @tag("oip-grpc")
    @task
    def dcgan(self) -> None:
        self.call("dcgan", {})


def red_disc_png(side: int = 64) -> bytes:
    """An emoji-like input for img2img: a red disc on white."""
    image = Image.new("RGB", (side, side), "white")
    ImageDraw.Draw(image).ellipse((side // 6, side // 6, side - side // 6, side - side // 6), fill=(220, 30, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@events.init.add_listener
def apply_mix_and_pacing(environment, **_) -> None:
    """Users and weights from --atelier-mix, pacing from --atelier-pace, and no user left without a task by --tags
    (Locust would start it and fail on its first task)."""
    options = environment.parsed_options
    if options is None:
        return
    users = {cls.mix_name: cls for cls in environment.user_classes if getattr(cls, "mix_name", "")}
    if options.atelier_mix:
        mix = workload.parse_mix(options.atelier_mix, tuple(users))
        for name, cls in users.items():
            cls.weight = mix.get(name, 0)
    if options.atelier_pace > 0:
        for cls in users.values():
            cls.wait_time = constant_throughput(options.atelier_pace)
    tags, excluded = set(options.tags or ()), set(options.exclude_tags or ())
    environment.user_classes[:] = [cls for cls in environment.user_classes
                                   if cls.weight > 0 and has_task_left(cls, tags, excluded)]
    if not environment.user_classes:
        raise ValueError("no user left after --atelier-mix and --tags")


def has_task_left(cls, tags: set[str], excluded: set[str]) -> bool:
    for task_function in cls.tasks:
        task_tags = getattr(task_function, "locust_tag_set", set())
        if (not tags or task_tags & tags) and not task_tags & excluded:
            return True
    return False
