"""An Engine on the committed models inside the test process, for tests of the pipelines without HTTP.

The Engine's batchers belong to the event loop that first submits to them, so every in-process test runs its
coroutines on this module's one loop (`run`), and a module's Engine is stopped there when the module ends.

    @pytest.fixture(scope="module")
    def engine():
        with in_process.engine() as running:
            yield running
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence

from service import pipelines
from service.config import load_config
from service.engine import Engine
from service.registry import Registry

LOOP = asyncio.new_event_loop()


def run(coroutine):
    return LOOP.run_until_complete(coroutine)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """An Engine with the default configuration (environment ignored) on the committed models."""
    config = load_config({})
    running = Engine(Registry.load(config), config)
    try:
        yield running
    finally:
        run(running.stop())


async def generate_all(engine: Engine, requests: Sequence) -> list[pipelines.Generated]:
    """Every request at once, so they share the Engine's batches as concurrent clients would."""
    return await asyncio.gather(*(pipelines.generate(engine, request) for request in requests))
