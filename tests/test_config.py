"""Specifications of `service.config`: env in, one frozen Config out, clear errors.

.venv/bin/python -m pytest tests/test_config.py -q
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from service.config import Config, ConfigError, load_config

SERVICE_DIR = Path(__file__).resolve().parent.parent / "service"


def test_defaults_when_no_variable_is_set():
    config = load_config({})
    assert config == Config()
    assert config.models_dir == SERVICE_DIR.parent / "models"
    assert config.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert (config.max_batch, config.gather_ms, config.diffusion_batching) == (64, 0.0, "step")
    assert (config.grpc_port, config.max_inflight, config.api_key) == (8001, 1024, None)
    assert (config.max_queue_seconds, config.queue_order, config.simulated_cost_ms) == (8.0, "age", None)
    assert (config.intra_op_threads, config.use_fp16, config.warmup) == (0, "auto", True)
    assert config.prometheus_multiproc_dir is None


def test_empty_values_keep_the_defaults():
    assert load_config({"ATELIER_API_KEY": "", "ATELIER_MAX_BATCH": "  ", "ATELIER_FP16": ""}) == Config()


def test_reads_every_variable():
    config = load_config(
        {
            "ATELIER_MODELS_DIR": "/srv/models",
            "ATELIER_PROVIDERS": "cpu",
            "ATELIER_MAX_BATCH": "32",
            "ATELIER_GATHER_MS": "2.5",
            "ATELIER_DIFFUSION_BATCHING": "request",
            "ATELIER_GRPC_PORT": "9001",
            "ATELIER_MAX_INFLIGHT": "8",
            "ATELIER_API_KEY": "s3cret",
            "ATELIER_INTRA_OP_THREADS": "2",
            "ATELIER_FP16": "off",
            "ATELIER_WARMUP": "false",
            "ATELIER_DRAIN_SECONDS": "5",
            "ATELIER_REQUEST_TIMEOUT_SECONDS": "0.5",
            "PROMETHEUS_MULTIPROC_DIR": "/tmp/prom",
        }
    )
    assert config == Config(
        models_dir=Path("/srv/models"),
        providers=("CPUExecutionProvider",),
        max_batch=32,
        gather_ms=2.5,
        diffusion_batching="request",
        grpc_port=9001,
        max_inflight=8,
        api_key="s3cret",
        intra_op_threads=2,
        use_fp16="off",
        warmup=False,
        drain_seconds=5.0,
        request_timeout_seconds=0.5,
        prometheus_multiproc_dir=Path("/tmp/prom"),
    )


def test_providers_keep_the_operators_order_and_ignore_case_and_spaces():
    assert load_config({"ATELIER_PROVIDERS": " CPU , cuda "}).providers == (
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ATELIER_PROVIDERS", "tpu"),
        ("ATELIER_PROVIDERS", "cuda,cuda"),
        ("ATELIER_PROVIDERS", "cuda,,cpu"),
        ("ATELIER_MAX_BATCH", "0"),
        ("ATELIER_MAX_BATCH", "many"),
        ("ATELIER_GATHER_MS", "-1"),
        ("ATELIER_GATHER_MS", "nan"),
        ("ATELIER_DIFFUSION_BATCHING", "image"),
        ("ATELIER_GRPC_PORT", "70000"),
        ("ATELIER_MAX_INFLIGHT", "1.5"),
        ("ATELIER_INTRA_OP_THREADS", "-2"),
        ("ATELIER_FP16", "maybe"),
        ("ATELIER_WARMUP", "sometimes"),
        ("ATELIER_DRAIN_SECONDS", "-1"),
        ("ATELIER_REQUEST_TIMEOUT_SECONDS", "0"),
    ],
)
def test_invalid_value_raises_config_error_naming_the_variable(variable, value):
    with pytest.raises(ConfigError, match=re.escape(variable)) as raised:
        load_config({variable: value})
    assert repr(value) in str(raised.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("TRUE", True), ("off", False), ("no", False)])
def test_warmup_accepts_the_usual_spellings_of_a_boolean(value, expected):
    assert load_config({"ATELIER_WARMUP": value}).warmup is expected


def test_api_key_never_appears_in_repr():
    assert "s3cret" not in repr(load_config({"ATELIER_API_KEY": "s3cret"}))


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_config({}).max_batch = 1  # type: ignore[misc]


def test_no_other_service_module_reads_the_environment():
    readers = [
        path.name
        for path in SERVICE_DIR.glob("*.py")
        if path.name != "config.py" and re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text())
    ]
    assert readers == []
