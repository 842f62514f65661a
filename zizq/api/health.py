"""GET/HEAD /health and GET/HEAD /version, served on both listeners.

/health is what load balancers and orchestrators poll: it answers 503 with
the reason while the store cannot write (disk full, I/O error), so traffic
can move elsewhere, and 200 again once writes resume by themselves.
"""

from __future__ import annotations

import falcon

from zizq.api.codec import respond
from zizq.store import Store


class Health:
    def __init__(self, store: Store | None = None) -> None:
        self._store = store

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        failure = None if self._store is None else self._store.failure
        if failure is None:
            respond(req, resp, {"status": "ok"})
        else:
            resp.set_header("Retry-After", "1")
            respond(req, resp, {"status": "unavailable", "error": failure}, 503)

    on_head = on_get  # Falcon sends the GET headers (Content-Length included) without the body


class Version:
    def __init__(self, version: str) -> None:
        self._version = version

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(req, resp, {"version": self._version})

    on_head = on_get
