"""Workers report outcomes: success (one or many) and failure."""

import falcon

from zizq.api.codec import read_body, respond, response_type
from zizq.queue import Engine, NotFound
from zizq.queue.spec import parse_failure, parse_ids


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
    """POST /jobs/success: acks every valid id, then lists the rest with 422."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = response_type(req)
        ids = parse_ids(await read_body(req))
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
        failure = parse_failure(await read_body(req))
        job = await self._engine.fail(job_id, failure)
        respond(req, resp, job, 200, media)
