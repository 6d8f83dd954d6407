"""Atelier's configuration: every `ATELIER_*` environment variable, read once into a frozen `Config`.

This is the only module in `service/` that reads `os.environ`; everything else receives a `Config`.
An unset or empty variable keeps the default written on the field (so a Kubernetes manifest may
set `value: ""` to mean "default"); an invalid one raises `ConfigError` naming the variable.

    .venv/bin/python -c "from service.config import load_config; print(load_config())"
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# ORT's provider names, keyed by the short names an operator types in ATELIER_PROVIDERS.
ORT_PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class ConfigError(ValueError):
    """An ATELIER_* variable holds a value the service cannot use; the message names it."""


@dataclass(frozen=True)
class Config:
    # The committed models live beside the package, so a checkout or a Bento serves without setup.
    models_dir: Path = Path(__file__).resolve().parent.parent / "models"
    # GPU first, CPU as the fallback ORT uses for ops CUDA lacks and on machines without a GPU.
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    # 64 rows covers concurrency 32 with classifier-free guidance (two rows per image) in one run.
    max_batch: int = 64
    # 0 = take whatever is queued, no waiting; the batching benchmark (bench/) decides any change.
    gather_ms: float = 0.0
    # "step": requests at different sampler steps share each ONNX run (step-level continuous
    # batching, the design's choice); "request" batches whole sampling loops, for bench/ to compare.
    diffusion_batching: Literal["step", "request"] = "step"
    # KServe's conventional gRPC port (HTTP stays on BentoML's 3000).
    grpc_port: int = 8001
    # The address gRPC listens on. None: the HTTP server's (`bentoml serve --host`), so an operator who binds
    # HTTP to 127.0.0.1 does not expose inference over gRPC to the network; 127.0.0.1 when that is unknown.
    grpc_host: str | None = None
    # Admission by predicted wait: a request is admitted while the model work queued ahead of it (per
    # function: rows x the function's measured cost per row, plus its runs' fixed cost) is predicted to
    # take at most this long; otherwise 429 with Retry-After = that prediction. Chosen from measurement
    # on 2 CPU cores (docs/RELIABILITY.md): above the queue a 32-user mixed diffusion load builds, so
    # ordinary load is never refused, and well inside the request timeout.
    max_queue_seconds: float = 8.0
    # A safety net behind the budget, not the admission rule: it bounds memory and file descriptors if
    # the cost model were ever wrong; on this machine the budget refuses long before it binds.
    max_inflight: int = 1024
    # Which queued rows of a priority run first: "age" (oldest request first: a request's steps are not
    # overtaken by newer requests', so waits are FCFS-like, as admission's prediction assumes), "remaining"
    # (least remaining work first) or "arrival" (each submission in turn, the round-robin of plain continuous
    # batching). On 2 cores the three are within noise of each other (make bench, docs/PERFORMANCE.md §3:
    # p95 ÷ request-level 0.97x, 0.93x, 0.95x at 1.03-1.04x the throughput).
    queue_order: Literal["age", "remaining", "arrival"] = "age"
    # Batch-priority rows fill a run while it costs at most this many times its interactive rows alone (one
    # row's cost when there are none). Measured on 2 cores under a flood of batch requests (bench/admission.py):
    # interactive p95 1.7-1.9x unloaded at 1.2, 2.2x at 1.5, while the batch requests still complete.
    batch_fill: float = 1.2
    # Bench only: replace every ONNX run with a sleep of fixed + per_row * rows milliseconds (a simulated
    # accelerator, its outputs zeros), e.g. "2.08,0.0076" fitted from docs/perf/gpu_h100.json. None serves.
    simulated_cost_ms: tuple[float, float] | None = None
    # None = open service (local use); a key set in the environment turns on bearer-token checks.
    # Kept out of repr so the key never reaches a log line.
    api_key: str | None = field(default=None, repr=False)
    # The HMAC key that signs genome and session tokens (service/genomes.py), so clients carry the state
    # and any replica sharing the key accepts it. None: a random key per process (tokens then die with the
    # process and another replica refuses them). Kept out of repr like the API key.
    genome_key: str | None = field(default=None, repr=False)
    # 0 lets onnxruntime use every core: one Engine per process owns the machine's cores.
    intra_op_threads: int = 0
    # onnxruntime's intra-op threads spin-wait for work after each op by default. Here runs of several
    # functions (denoise, decode) overlap in their batcher threads, and spinning threads of one session
    # take the cores from the other's: measured on 2 cores (make bench-steps, mixed diffusion at 38 req/s),
    # spinning off served 32.9 img/s step-level against 26.6 with it on, p95 1.40 s against 2.33 s.
    ort_spinning: bool = False
    # "auto" = fp16 graphs only when CUDA is the provider: on CPU fp16 is slower, not faster.
    use_fp16: Literal["auto", "on", "off"] = "auto"
    # Kubernetes' default terminationGracePeriodSeconds is 30 s: after SIGTERM, in-flight requests get
    # 25 s to finish (new ones get 503) and the shutdown hooks get the rest, before the kubelet's SIGKILL.
    drain_seconds: float = 25.0
    # A request still running after this long gets a 504 instead of holding its client and its slot.
    # The largest one allowed (n=16, 250 steps) takes ~19 s alone on 2 CPU cores, ~40 s beside another.
    request_timeout_seconds: float = 60.0
    # A first run per function at start-up pays ORT's lazy allocations before /readyz says ready.
    warmup: bool = True
    # Content Credentials (C2PA, service/credentials.py) on every PNG: the PEM files of the ES256 signing key and
    # its certificate chain (leaf first, then intermediates), e.g. a mounted Kubernetes Secret. "auto" signs
    # exactly when a key is configured, so a deployment turns signing on by mounting its key; "off" keeps a
    # configured key unused; "on" refuses to start without one.
    c2pa: Literal["auto", "on", "off"] = "auto"
    c2pa_key_file: Path | None = None
    c2pa_chain_file: Path | None = None
    # BentoML's variable, not ours: `bentoml serve` sets it for each worker (prometheus multiprocess
    # mode); None outside a served worker (tests, scripts), where there are no files to tidy.
    prometheus_multiproc_dir: Path | None = None

    @property
    def c2pa_enabled(self) -> bool:
        return self.c2pa != "off" and self.c2pa_key_file is not None


def load_config(environ: Mapping[str, str] = os.environ) -> Config:
    """Build the Config from `environ`; unset or empty variables keep the field defaults."""
    overrides: dict[str, Any] = {}
    for variable, (field_name, parse) in _VARIABLES.items():
        raw = environ.get(variable, "").strip()
        if raw:
            overrides[field_name] = parse(variable, raw)
    config = Config(**overrides)
    if (config.c2pa_key_file is None) != (config.c2pa_chain_file is None):
        raise ConfigError("ATELIER_C2PA_KEY_FILE and ATELIER_C2PA_CHAIN_FILE go together: a signing key needs its "
                          "certificate chain")
    if config.c2pa == "on" and config.c2pa_key_file is None:
        raise ConfigError("ATELIER_C2PA=on needs ATELIER_C2PA_KEY_FILE and ATELIER_C2PA_CHAIN_FILE")
    return config


def _path(variable: str, raw: str) -> Path:
    return Path(raw).expanduser()


def _providers(variable: str, raw: str) -> tuple[str, ...]:
    names = [name.strip().lower() for name in raw.split(",")]
    unknown = [name for name in names if name not in ORT_PROVIDERS]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(
            f"{variable} must be a comma list of distinct providers from {sorted(ORT_PROVIDERS)} "
            f"(e.g. 'cuda,cpu'), got {raw!r}"
        )
    return tuple(ORT_PROVIDERS[name] for name in names)


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(variable: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            raise ConfigError(f"{variable} must be an integer {bounds}, got {raw!r}")
        return value

    return parse


def _number(unit: str, minimum: float, inclusive: bool = True) -> Callable[[str, str], float]:
    def parse(variable: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value >= minimum if inclusive else value > minimum)):
            raise ConfigError(f"{variable} must be a number of {unit} {'>=' if inclusive else '>'} {minimum:g}, "
                              f"got {raw!r}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(variable: str, raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise ConfigError(f"{variable} must be one of {', '.join(choices)}; got {raw!r}")
        return value

    return parse


def _boolean(variable: str, raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{variable} must be true/false (also 1/0, yes/no, on/off), got {raw!r}")


def _cost_pair(variable: str, raw: str) -> tuple[float, float]:
    try:
        fixed, per_row = (float(part) for part in raw.split(","))
    except ValueError:
        fixed = per_row = math.nan
    if not (math.isfinite(fixed) and math.isfinite(per_row) and fixed >= 0 and per_row >= 0):
        raise ConfigError(f"{variable} must be 'fixed_ms,per_row_ms' (two numbers >= 0), got {raw!r}")
    return fixed, per_row


def _text(variable: str, raw: str) -> str:
    return raw


# Variable -> (Config field, parser). Parsers see the stripped, non-empty value.
_VARIABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "ATELIER_MODELS_DIR": ("models_dir", _path),
    "ATELIER_PROVIDERS": ("providers", _providers),
    "ATELIER_MAX_BATCH": ("max_batch", _integer(1)),
    "ATELIER_GATHER_MS": ("gather_ms", _number("milliseconds", 0)),
    "ATELIER_DIFFUSION_BATCHING": ("diffusion_batching", _choice("step", "request")),
    "ATELIER_GRPC_PORT": ("grpc_port", _integer(1, 65535)),
    "ATELIER_GRPC_HOST": ("grpc_host", _text),
    "ATELIER_MAX_QUEUE_SECONDS": ("max_queue_seconds", _number("seconds", 0, inclusive=False)),
    "ATELIER_MAX_INFLIGHT": ("max_inflight", _integer(1)),
    "ATELIER_QUEUE_ORDER": ("queue_order", _choice("age", "remaining", "arrival")),
    "ATELIER_BATCH_FILL": ("batch_fill", _number("times a run's interactive cost", 1)),
    "ATELIER_SIMULATED_COST_MS": ("simulated_cost_ms", _cost_pair),
    "ATELIER_API_KEY": ("api_key", _text),
    "ATELIER_GENOME_KEY": ("genome_key", _text),
    "ATELIER_INTRA_OP_THREADS": ("intra_op_threads", _integer(0)),
    "ATELIER_ORT_SPINNING": ("ort_spinning", _boolean),
    "ATELIER_DRAIN_SECONDS": ("drain_seconds", _number("seconds", 0)),
    "ATELIER_REQUEST_TIMEOUT_SECONDS": ("request_timeout_seconds", _number("seconds", 0, inclusive=False)),
    "ATELIER_FP16": ("use_fp16", _choice("auto", "on", "off")),
    "ATELIER_WARMUP": ("warmup", _boolean),
    "ATELIER_C2PA": ("c2pa", _choice("auto", "on", "off")),
    "ATELIER_C2PA_KEY_FILE": ("c2pa_key_file", _path),
    "ATELIER_C2PA_CHAIN_FILE": ("c2pa_chain_file", _path),
    "PROMETHEUS_MULTIPROC_DIR": ("prometheus_multiproc_dir", _path),
}
