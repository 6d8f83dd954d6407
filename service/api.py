"""The BentoML service **Atelier**, the composition root: it builds the config, registry, Engine and
core once per worker, hands the core to the HTTP app and the gRPC server, and runs the lifecycle
(verify models before workers start, warm up, drain on SIGTERM, stop). Nothing imports this module.

    BENTOML_DO_NOT_TRACK=True .venv/bin/bentoml serve service:Atelier --port 3000
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal

import bentoml

from service import credentials, logs, metrics
from service.config import load_config
from service.engine import Engine
from service.registry import Registry, verified_manifests
from service.server import ServingCore
from service.transports import oip_grpc
from service.transports.http_app import create_app, label_bentoml_metrics_by_route

log = logging.getLogger("atelier")

app = create_app()
label_bentoml_metrics_by_route(app)  # BentoML's own HTTP metrics would label each request by its raw path

# BentoML's own per-request timeout (traffic.timeout) leaves a timer armed for that long after every
# answer (bentoml/_internal/server/http/traffic.py never cancels it), holding the request's context and
# tracing spans, ~4.7 KiB: at 600 s a 10-minute soak grew the worker's RSS by 10 %. Ours (a clean 504
# that cancels the steps) fires first; BentoML's stays a backstop a few seconds later.
BENTOML_TIMEOUT_MARGIN_SECONDS = 5
# The software that signs Content Credentials (the claim generator of every C2PA manifest)
GENERATOR = {"name": "Atelier", "version": app.version}


@bentoml.service(name="Atelier", workers=1,
                 traffic={"timeout": load_config().request_timeout_seconds + BENTOML_TIMEOUT_MARGIN_SECONDS},
                 # RequestContext writes one JSON access line per request, with its request id; BentoML's
                 # own text line for the same request would cost as much again and say less
                 logging={"access": {"enabled": False}},
                 endpoints={"livez": "/livez", "readyz": "/readyz"})
@bentoml.asgi_app(app, path="/")
class Atelier:
    @bentoml.on_deployment
    def verify_models() -> None:
        """Once, in the `bentoml serve` process before any worker starts: a tampered, missing or unlisted
        model file, or an unreadable manifest, stops the server with a non-zero exit and the file's name.
        The same error in a worker's __init__ would only be respawned by circus, forever, serving nothing."""
        verified_manifests(load_config().models_dir)
        credentials.load(load_config(), GENERATOR)  # an unusable signing key or chain stops it the same way

    def __init__(self) -> None:
        logs.configure()
        config = load_config()
        if config.prometheus_multiproc_dir:
            metrics.forget_dead_workers(config.prometheus_multiproc_dir)
        registry = Registry.load(config)  # raises, naming the file, on any mismatch
        self.core = ServingCore(config, registry, Engine(registry, config), credentials.load(config, GENERATOR))
        app.state.core = self.core

    @bentoml.on_startup
    async def warm_up(self) -> None:
        # gRPC in this (the HTTP server's) event loop, so both transports share the Engine's batches
        self.grpc_server = await oip_grpc.start(self.core, app.version)
        if self.core.config.warmup:
            await self.core.engine.warm_up()
        self.drain_on_sigterm()
        # What lives as long as the worker (modules, sessions, the app: ~10^5 objects) leaves the cyclic
        # collector's generations, so its collections walk only what requests allocate: unfrozen, they were
        # 17 % of the event loop's CPU under small-request load (bench/overhead.py --profile)
        gc.collect()
        gc.freeze()
        self.core.ready = True
        log.info("Atelier ready: %s", json.dumps(self.core.registry.describe()))

    @bentoml.on_shutdown
    async def shut_down(self) -> None:
        self.core.ready = False
        await oip_grpc.stop(self.grpc_server)  # drains running RPCs (bounded) before the Engine stops
        await self.core.engine.stop()

    def __is_ready__(self) -> bool:
        return self.core.ready

    def drain_on_sigterm(self) -> None:
        """Put the core's drain in front of uvicorn's SIGTERM handler (installed before start-up hooks run).
        Left to uvicorn, SIGTERM closes this worker's listener at once while `bentoml serve` (circus) still
        holds the socket: new connections, /readyz probes included, hang in its backlog until it exits."""
        loop = asyncio.get_running_loop()
        uvicorn_exit = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame) -> None:
            loop.call_soon_threadsafe(self.core.start_draining, lambda: uvicorn_exit(signum, None))

        signal.signal(signal.SIGTERM, on_sigterm)
