import os

import pytest

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def server():
    """One real Atelier server for the whole session (start-up costs ~10 s on 2 cores)."""
    from harness.serving import AtelierServer

    # batching tests send dozens of requests at once: far past the default in-flight limit (2 on 2 cores)
    with AtelierServer(env={"ATELIER_MAX_INFLIGHT": "256"}) as running:
        yield running
