"""The images: `bentoml build` of bentofile.yaml (CPU) and bentofile.gpu.yaml (CUDA 13), offline, and the
Bento and Dockerfile each one generates. No Docker engine is needed (the Dockerfile is only read).

    .venv/bin/python -m pytest -q tests/test_bentofile.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).parent / "bentoml"
BENTOFILES = ("bentofile.yaml", "bentofile.gpu.yaml")


@cache
def built(bentofile: str, home: str) -> Path:
    """Build the Bento into its own BentoML home; return its directory."""
    env = {**os.environ, "BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "True"}
    result = subprocess.run([str(BENTOML), "build", "-f", bentofile, "--output", "tag", "."], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    tag = re.findall(r"__tag__:(\S+)", result.stdout)[-1]
    name, version = tag.split(":")
    return Path(home) / "bentos" / name / version


@pytest.fixture(scope="module")
def bento_home(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("bentoml-home"))


def dockerfile(bento: Path) -> str:
    return (bento / "env" / "docker" / "Dockerfile").read_text()


def served_files() -> set[str]:
    """Every file the service needs at run time: the whole service package (subpackages and protos
    included, caches excluded) and every committed model file."""
    paths = set()
    for top in ("service", "models"):
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                paths.add(str(path.relative_to(ROOT)))
    return paths


@pytest.mark.parametrize("bentofile", BENTOFILES)
def test_bento_holds_the_whole_service_its_protos_and_every_model(bentofile, bento_home):
    bento = built(bentofile, bento_home)
    packed = {str(path.relative_to(bento / "src")) for path in (bento / "src").rglob("*") if path.is_file()}
    assert served_files() <= packed, sorted(served_files() - packed)[:10]
    assert any(path.startswith("service/protos/") and path.endswith(".proto") for path in packed)
    assert not any("__pycache__" in path for path in packed)
    metadata = yaml.safe_load((bento / "bento.yaml").read_text())
    assert metadata["service"] == "service:Atelier"


@pytest.mark.parametrize("bentofile", BENTOFILES)
def test_every_python_package_is_pinned_exactly(bentofile, bento_home):
    requirements = (built(bentofile, bento_home) / "env" / "python" / "requirements.txt").read_text().split("\n")
    packages = [line for line in requirements if line.strip() and not line.startswith("#")]
    assert packages and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[0-9][0-9A-Za-z.+\-]*", line) for line in packages), packages
    names = {line.split("==")[0] for line in packages}
    onnxruntime = "onnxruntime-gpu" if "gpu" in bentofile else "onnxruntime"
    assert onnxruntime in names and ({"onnxruntime", "onnxruntime-gpu"} - {onnxruntime}).isdisjoint(names)


@pytest.mark.parametrize("bentofile", BENTOFILES)
def test_dockerfile_pins_its_base_runs_as_non_root_and_sends_no_telemetry(bentofile, bento_home):
    text = dockerfile(built(bentofile, bento_home))
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases and all(":" in base and not base.endswith(":latest") for base in bases), bases
    assert ":latest" not in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^ENV BENTOML_DO_NOT_TRACK=\$BENTOML_DO_NOT_TRACK$", text, re.M)
    assert re.search(r"^ARG BENTOML_DO_NOT_TRACK=True$", text, re.M)
    assert "ENTRYPOINT" in text and "EXPOSE 3000" in text


@pytest.mark.parametrize("bentofile", BENTOFILES)
def test_image_build_fetches_from_package_indexes_only(bentofile, bento_home):
    text = dockerfile(built(bentofile, bento_home))
    assert not re.search(r"\b(curl|wget|git clone)\b|^ADD https?://", text, re.M)
    # uv finds the base image's Python; it must never download one
    assert text.index("ENV UV_PYTHON_DOWNLOADS=$UV_PYTHON_DOWNLOADS") < text.index("uv venv")
    assert re.search(r"^ARG UV_PYTHON_DOWNLOADS=never$", text, re.M)
    # uv itself comes from PyPI, pinned by hash
    assert "--require-hashes" in text


def test_gpu_image_is_cuda_13_with_cudnn_9_and_selects_fp16_by_the_existing_setting(bento_home):
    text = dockerfile(built("bentofile.gpu.yaml", bento_home))
    [base] = re.findall(r"^FROM (\S+)", text, re.M)
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", base), base
    assert re.search(r"^ARG ATELIER_FP16=auto$", text, re.M)
    # the venv's Python is the base image's own 3.12, installed from Ubuntu's archive
    assert "uv venv --python 3.12" in text and "python3.12-venv" in text


def test_cpu_image_is_python_3_11_slim(bento_home):
    [base] = re.findall(r"^FROM (\S+)", dockerfile(built("bentofile.yaml", bento_home)), re.M)
    assert base == "python:3.11-slim"
