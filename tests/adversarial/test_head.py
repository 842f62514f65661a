"""Finding 7 (part): `HEAD /health` and `HEAD /version` answered 405.

Load balancers probe with HEAD; both answer 200 with the GET headers and no
body, on both listeners, over HTTP/1.1, HTTP/1.0 and h2c.
"""

from __future__ import annotations

import socket

import httpx
import pytest

PATHS = ("/health", "/version")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("listener", ["primary", "admin"])
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_head_answers_like_get_without_a_body(server, path, listener, http2):
    base = server.url if listener == "primary" else server.admin_url
    with httpx.Client(base_url=base, http1=not http2, http2=http2, timeout=10) as client:
        got = client.get(path)
        head = client.head(path)
    assert got.status_code == 200
    assert head.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert int(head.headers["content-length"]) == len(got.content)


@pytest.mark.parametrize("path", PATHS)
def test_head_over_http_1_0_has_no_body(server, path):
    """Raw bytes: a HEAD answer with a body would show up after the headers."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):  # HTTP/1.0: the server closes after the answer
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == b"200", head
    assert body == b""
    assert b"content-length:" in head.lower()
