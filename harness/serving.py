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
from collections.abc import Callable
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

    def __init__(self, env: dict[str, str] | None = None, ready_timeout: float = 90.0,
                 service: str = "service:Atelier"):
        self.service = service  # what `bentoml serve` imports (tests plant faults in a module of their own)
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
            [str(BENTOML), "serve", self.service, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait_until_ready(self.process, self.url + "/readyz", self.ready_timeout, self.log):
            return self
        self.stop()
        raise TimeoutError(f"server not ready in {self.ready_timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10.0).text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        return stop_process_group(self.process, sig, timeout)

    def __enter__(self) -> AtelierServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.home.cleanup()


def wait_until_ready(process: subprocess.Popen, probe_url: str, timeout: float, log: Callable[[], str]) -> bool:
    """Poll `probe_url` until it answers 200 (True) or `timeout` passes (False); a server process that
    exits meanwhile raises, with the tail of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log()}")
        try:
            if httpx.get(probe_url, timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def stop_process_group(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
    """Signal a server's whole process group (it was started in a session of its own), escalating to
    SIGKILL after `timeout`; returns its exit code (None if it never started)."""
    if process is None or process.poll() is not None:
        return process.returncode if process else None
    os.killpg(process.pid, sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait(10)


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
