import os

import pytest

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def server():
    """One real Atelier server for the whole session (start-up costs ~10 s on 2 cores)."""
    from harness.serving import AtelierServer

    # the defaults, admission included: the batching tests' dozens of concurrent requests are ordinary load
    with AtelierServer() as running:
        yield running
