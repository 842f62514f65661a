"""An answer given before the request body was read must not poison the connection.

A 400 for a bad query string (or a 413) leaves body bytes unread on an HTTP/1.1
connection; the server then drops the connection. Without `Connection: close`
on that answer a client reuses it and its next request fails with "Server
disconnected without sending a response" (seen in about half of the tries).
"""

from __future__ import annotations

import httpx
import msgpack


def test_reply_before_the_body_is_read_closes_the_connection_cleanly(server):
    body = msgpack.packb({"queue": "q", "blob": "x" * 70_000})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(30):
            response = client.patch(
                "/jobs?x=1", content=body, headers={"content-type": "application/msgpack"}
            )
            assert response.status_code == 400, response.text
            assert response.headers.get("connection") == "close"
            assert client.get("/health").status_code == 200  # a fresh connection, or a clean one


def test_read_bodies_keep_the_connection_alive(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.post("/jobs", json={"queue": "q", "type": "t", "payload": {}})
        assert response.status_code == 201
        assert response.headers.get("connection") != "close"
        bad = client.post("/jobs", json={"queue": "", "type": "t", "payload": {}})
        assert bad.status_code == 400 and bad.headers.get("connection") != "close"
