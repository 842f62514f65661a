"""GET /health and GET /version, served on both listeners."""

import falcon

from zizq.api.codec import respond


class Health:
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(req, resp, {"status": "ok"})


class Version:
    def __init__(self, version: str) -> None:
        self._version = version

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        respond(req, resp, {"version": self._version})
