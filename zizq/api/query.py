"""Visibility and control: list, count, patch and delete jobs; errors; queues; reset."""

from __future__ import annotations

import falcon

from zizq.api import params
from zizq.api.codec import job_with_payload, read_parsed, respond, respond_jobs, response_type
from zizq.queue import Engine
from zizq.queue.patch import parse_patch
from zizq.queue.records import public_view

MAX_JOBS_PAGE = 2000
MAX_ERRORS_PAGE = 2000  # the reference accepts 2000 here too, and clients send it
MAX_ATTEMPT = 2**32 - 1  # error keys hold the attempt in 4 bytes


class Queues:
    """GET /queues"""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = response_type(req)
        params.reject_unknown(req, ())
        respond(req, resp, {"queues": await self._engine.queues()}, 200, media)


class JobCount:
    """GET /jobs/count"""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        media = response_type(req)
        params.reject_unknown(req, params.FILTER_PARAMS)
        count = await self._engine.count(params.job_filter(req))
        respond(req, resp, {"count": count}, 200, media)


async def list_jobs(engine: Engine, req: falcon.Request, resp: falcon.Response) -> None:
    media = response_type(req)
    params.reject_unknown(req, params.FILTER_PARAMS + params.PAGE_PARAMS)
    job_filter = params.job_filter(req)
    limit = params.limit(req, MAX_JOBS_PAGE)
    desc = params.order_desc(req)
    after, before = params.cursors(req)
    page = await engine.list_jobs(job_filter, limit, desc, after, before)
    jobs = [
        job_with_payload(public_view(job_id, record), payload)
        for job_id, record, payload in page.items
    ]
    links = params.page_links(
        req, "desc" if desc else "asc", limit, page.next_after, page.prev_before
    )
    respond_jobs(req, resp, {"jobs": jobs, "pages": links}, jobs, media)


async def patch_jobs(engine: Engine, req: falcon.Request, resp: falcon.Response) -> None:
    media = response_type(req)
    params.reject_unknown(req, params.FILTER_PARAMS)
    job_filter = params.job_filter(req)
    patch = await read_parsed(req, lambda body, _: parse_patch(body))
    respond(req, resp, {"patched": await engine.patch_jobs(job_filter, patch)}, 200, media)


async def delete_jobs(engine: Engine, req: falcon.Request, resp: falcon.Response) -> None:
    media = response_type(req)
    params.reject_unknown(req, params.FILTER_PARAMS)
    deleted = await engine.delete_jobs(params.job_filter(req))
    respond(req, resp, {"deleted": deleted}, 200, media)


def _is_attempt(raw: str) -> bool:
    return raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= MAX_ATTEMPT


def _attempt(raw: str) -> int:
    return params.whole_number(raw, "attempt", 0, MAX_ATTEMPT)


class JobErrors:
    """GET /jobs/{id}/errors"""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        media = response_type(req)
        params.reject_unknown(req, params.PAGE_PARAMS)
        limit = params.limit(req, MAX_ERRORS_PAGE)
        desc = params.order_desc(req)
        after, before = params.cursors(req, is_key=_is_attempt)
        page = self._engine.list_errors(
            job_id,
            limit,
            desc,
            None if after is None else int(after),
            None if before is None else int(before),
        )
        errors = [error for _, error in page.items]
        links = params.page_links(
            req, "desc" if desc else "asc", limit, page.next_after, page.prev_before
        )
        respond(req, resp, {"errors": errors, "pages": links}, 200, media)


class JobError:
    """GET /jobs/{id}/errors/{attempt}"""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_get(
        self, req: falcon.Request, resp: falcon.Response, job_id: str, attempt: str
    ) -> None:
        media = response_type(req)
        respond(req, resp, self._engine.get_error(job_id, _attempt(attempt)), 200, media)


class Reset:
    """POST /reset: every cron group, then every job, in flight or not (no license needed)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        response_type(req)
        await self._engine.crons.delete_all()  # first: no firing can enqueue after the jobs go
        await self._engine.reset()
        resp.status = 204


async def patch_job(
    engine: Engine, req: falcon.Request, resp: falcon.Response, job_id: str
) -> None:
    media = response_type(req)
    patch = await read_parsed(req, lambda body, _: parse_patch(body))
    respond(req, resp, await engine.patch_job(job_id, patch), 200, media)


async def delete_job(
    engine: Engine, req: falcon.Request, resp: falcon.Response, job_id: str
) -> None:
    response_type(req)
    await engine.delete_job(job_id)
    resp.status = 204
