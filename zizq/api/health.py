"""GET/HEAD /health and GET/HEAD /version, served on both listeners.

/health is what load balancers and orchestrators poll: it answers 503 with
the reason while the store cannot write (disk full, I/O error), so traffic
can move elsewhere, and 200 again once writes resume by themselves.

/version reports API_VERSION, the reference release whose API (free tier) this
server implements in full, because that is what the official clients compare
their own version with. Our own package version (the build) is a separate
thing: it goes out in the BUILD_HEADER response header and `zizq --version`.
"""

from __future__ import annotations

import falcon

from zizq.api.codec import respond
from zizq.store import Store

# Raise this only when every free-tier endpoint, field and behaviour of that
# reference release is implemented (see "Versions" in the README). 0.7.0 adds
# the `budgets.key` filter on job queries (its free-tier addition), which we serve.
API_VERSION = "0.7.0"
BUILD_HEADER = "Zizq-Build"


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
    def __init__(self, build: str, api_version: str = API_VERSION) -> None:
        self._build = build
        self._api_version = api_version

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_header(BUILD_HEADER, self._build)
        respond(req, resp, {"version": self._api_version})

    on_head = on_get
