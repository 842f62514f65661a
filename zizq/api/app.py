"""Assembly of the two ASGI applications: the primary API and the admin API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import falcon.asgi

from zizq.api import errors
from zizq.api.acks import BulkSuccess, Failure, Success
from zizq.api.admin import Backup, Compact
from zizq.api.crons import CronsNeedLicense
from zizq.api.health import Health, Version
from zizq.api.jobs import BulkJobs, JobCollection, JobItem
from zizq.api.query import JobCount, JobError, JobErrors, Queues, Reset
from zizq.api.take import RECEIVE_KEY, Take
from zizq.queue import Engine
from zizq.queue.maintenance import Maintenance

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


def _base_app(version: str) -> falcon.asgi.App:
    app = falcon.asgi.App(cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    app.add_route("/health", Health())
    app.add_route("/version", Version(version))
    return app


def _expose_receive(app: falcon.asgi.App) -> ASGIApp:
    """Put the ASGI receive channel in the scope so a stream can watch for disconnects."""

    async def asgi(scope: dict, receive: Callable, send: Callable) -> None:
        scope[RECEIVE_KEY] = receive
        await app(scope, receive, send)

    return asgi


def create_primary_app(engine: Engine, version: str) -> ASGIApp:
    app = _base_app(version)
    app.add_route("/jobs", JobCollection(engine))
    app.add_route("/jobs/bulk", BulkJobs(engine))
    app.add_route("/jobs/take", Take(engine))
    app.add_route("/jobs/success", BulkSuccess(engine))
    app.add_route("/jobs/{job_id}", JobItem(engine))
    app.add_route("/jobs/{job_id}/success", Success(engine))
    app.add_route("/jobs/{job_id}/failure", Failure(engine))
    app.add_route("/jobs/count", JobCount(engine))
    app.add_route("/jobs/{job_id}/errors", JobErrors(engine))
    app.add_route("/jobs/{job_id}/errors/{attempt}", JobError(engine))
    app.add_route("/queues", Queues(engine))
    app.add_route("/reset", Reset(engine))
    crons = CronsNeedLicense()
    for path in (
        "/crons",
        "/crons/{group}",
        "/crons/{group}/entries",
        "/crons/{group}/entries/{entry}",
    ):
        app.add_route(path, crons)
    return _expose_receive(app)


def create_admin_app(maintenance: Maintenance, version: str) -> ASGIApp:
    app = _base_app(version)
    app.add_route("/backup", Backup(maintenance))
    app.add_route("/compact", Compact(maintenance))
    return _expose_receive(app)
