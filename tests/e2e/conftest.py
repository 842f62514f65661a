"""Fixtures that start real servers. Each test gets a fresh root dir."""

from __future__ import annotations

import pytest

from tests.e2e.zizq_process import FORMATS, Api, ZizqServer


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server(*flags) -> running ZizqServer; all are stopped at teardown."""
    servers: list[ZizqServer] = []

    def start(*args: str, root_dir=None, env: dict | None = None) -> ZizqServer:
        server = ZizqServer(root_dir or tmp_path / f"root{len(servers)}", *args, env=env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        try:
            server.stop()
        except Exception:
            server.kill()


@pytest.fixture
def server(start_server) -> ZizqServer:
    return start_server()


@pytest.fixture(
    params=[(fmt, h2) for fmt in FORMATS for h2 in (False, True)],
    ids=lambda p: f"{p[0]}-{'h2c' if p[1] else 'h1'}",
)
def protocol(request) -> tuple[str, bool]:
    """Every combination of body format (JSON, MessagePack) and HTTP version (1.1, h2c)."""
    return request.param


@pytest.fixture
def api(server, protocol):
    fmt, http2 = protocol
    with Api(server.url, fmt=fmt, http2=http2) as client:
        yield client
