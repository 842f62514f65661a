"""In-process fixtures: a real RocksDB store in a temp dir, an engine, the ASGI app."""

from __future__ import annotations

import asyncio

import pytest

from zizq.queue import Engine, EngineSettings
from zizq.store import Store


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "root", cache_size=8 * 1024 * 1024)
    yield store
    store.close()


@pytest.fixture
def run():
    """Run a coroutine on a fresh event loop (the engine needs a running loop)."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture
def make_engine(store, run):
    engines: list[Engine] = []

    def make(**settings) -> Engine:
        engine = Engine(store, EngineSettings(**settings))
        run(engine.start())
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        run(engine.stop())
