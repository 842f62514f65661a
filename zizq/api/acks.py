"""Workers report outcomes: success (one or many) and failure."""

import falcon

from zizq.api.codec import read_parsed, respond, response_type
from zizq.queue import Engine, NotFound
from zizq.queue.spec import TooLarge, parse_failure, parse_ids


class Success:
    """POST /jobs/{id}/success"""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        response_type(req)  # refuse an unacceptable Accept before acting
        if not await self._engine.ack(job_id):
            raise NotFound("job not found or not in flight")
        resp.status = 204


class BulkSuccess:
    """POST /jobs/success: acks every valid id, then lists the rest with 422.

    A malformed id is simply not found; at most MAX_ACK_IDS ids per call (413).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = response_type(req)
        try:
            ids = await read_parsed(req, lambda body, _: parse_ids(body))
        except TooLarge as exc:
            raise falcon.HTTPPayloadTooLarge(description=str(exc)) from None
        not_found = await self._engine.ack_many(ids)
        if not_found:
            respond(req, resp, {"not_found": not_found}, 422, media)
        else:
            resp.status = 204


class Failure:
    """POST /jobs/{id}/failure"""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        media = response_type(req)
        failure = await read_parsed(req, lambda body, _: parse_failure(body))
        job = await self._engine.fail(job_id, failure)
        respond(req, resp, job, 200, media)
