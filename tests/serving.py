"""Start and stop a real `bentoml serve service:Atelier` on 127.0.0.1 for tests and benchmarks.

    with AtelierServer(env={"ATELIER_MAX_BATCH": "32"}) as server:
        httpx.get(server.url + "/readyz")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).parent / "bentoml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AtelierServer:
    """A served Atelier subprocess; `url` is its HTTP base, `grpc_port` its gRPC port."""

    def __init__(self, env: dict[str, str] | None = None, ready_timeout: float = 90.0):
        self.port, self.grpc_port = free_port(), free_port()
        # A BentoML home of its own: `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir at
        # start, so servers sharing a home (two in one test session, or two test sessions on one
        # machine) wipe and mix each other's /metrics.
        self.home = tempfile.TemporaryDirectory(prefix="atelier-home-")
        self.env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "ATELIER_GRPC_PORT": str(self.grpc_port),
                    "PYTHONUNBUFFERED": "1", "BENTOML_HOME": self.home.name, **(env or {})}
        self.ready_timeout = ready_timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = ROOT / ".cache" / f"server-{self.port}.log"

    def start(self) -> AtelierServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(BENTOML), "serve", "service:Atelier", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"server not ready in {self.ready_timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10.0).text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(10)

    def __enter__(self) -> AtelierServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.home.cleanup()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` in a Prometheus text page."""
    total = 0.0
    for line in text.split("\n"):  # not splitlines(): label values may hold \x85 or \u2028 verbatim
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
