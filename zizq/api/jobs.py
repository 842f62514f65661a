"""Enqueue (single and bulk) and reading one job."""

import falcon

from zizq.api import query
from zizq.api.codec import (
    job_with_payload,
    read_parsed,
    respond,
    respond_jobs,
    response_type,
)
from zizq.queue import Engine
from zizq.queue.records import enqueue_view, is_new_job, public_view
from zizq.queue.spec import TooLarge, parse_bulk, parse_job


class JobCollection:
    """POST /jobs (enqueue); GET, PATCH, DELETE /jobs (by filter)"""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        await query.list_jobs(self._engine, req, resp)

    async def on_patch(self, req: falcon.Request, resp: falcon.Response) -> None:
        await query.patch_jobs(self._engine, req, resp)

    async def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        await query.delete_jobs(self._engine, req, resp)

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = response_type(req)
        spec = await read_parsed(req, lambda body, from_json: parse_job(body, "", from_json))
        (job,) = await self._engine.enqueue([spec])
        job = enqueue_view(job)
        respond(req, resp, job, 201 if is_new_job(job) else 200, media)


class BulkJobs:
    """POST /jobs/bulk: all jobs or none; at most MAX_BULK_JOBS of them (413 past it)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = response_type(req)
        try:
            specs = await read_parsed(req, parse_bulk)
        except TooLarge as exc:
            raise falcon.HTTPPayloadTooLarge(description=str(exc)) from None
        jobs = [enqueue_view(job) for job in await self._engine.enqueue(specs, bulk=True)]
        # 200 only when no job at all was created (every one a duplicate or folded).
        created = not jobs or any(is_new_job(job) for job in jobs)
        respond(req, resp, {"jobs": jobs}, 201 if created else 200, media)


class JobItem:
    """GET, PATCH, DELETE /jobs/{id}"""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        media = response_type(req)
        record, payload = self._engine.get_job(job_id)
        view = job_with_payload(public_view(job_id, record), payload)
        respond_jobs(req, resp, view, [view], media)

    async def on_patch(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        await query.patch_job(self._engine, req, resp, job_id)

    async def on_delete(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        await query.delete_job(self._engine, req, resp, job_id)
