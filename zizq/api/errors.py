"""One error shape for every failure: {"error": "<message>"} in the negotiated format."""

from __future__ import annotations

import logging

import falcon

from zizq.api import codec
from zizq.license import LicenseRequired
from zizq.queue.errors import (
    AlreadyExists,
    Conflict,
    EngineError,
    InvalidInput,
    NotFound,
    ProFeatureRequired,
    Unprocessable,
)
from zizq.queue.pools import PoolBusy
from zizq.store import StoreUnavailable

logger = logging.getLogger("zizq.api")

_STATUS = {
    InvalidInput: 400,
    ProFeatureRequired: 403,
    NotFound: 404,
    AlreadyExists: 409,
    Conflict: 422,
    Unprocessable: 422,
}


def _error_media(req: falcon.Request) -> str:
    try:
        return codec.response_type(req)
    except falcon.HTTPNotAcceptable:
        return codec.JSON  # the client accepts nothing we make; JSON is the most readable


def _write_error(
    req: falcon.Request,
    resp: falcon.Response,
    status: int,
    message: str,
    supported: list[str] | None = None,
) -> None:
    media = _error_media(req)
    body: dict = {"error": message}
    if supported is not None:  # 406 and 415 say what the server can do instead
        body["supported"] = supported
    resp.status = status
    resp.content_type = media
    resp.data = codec.encode(media, body)


async def engine_error(req, resp, error: EngineError, params) -> None:
    _write_error(req, resp, _STATUS.get(type(error), 400), str(error))


async def license_required(req, resp, error: LicenseRequired, params) -> None:
    _write_error(req, resp, 403, str(error))


async def store_unavailable(req, resp, error: StoreUnavailable, params) -> None:
    """Nothing of the request was stored; retrying later is safe (GET /health says when)."""
    resp.set_header("Retry-After", "1")
    _write_error(req, resp, 503, str(error))


async def pool_busy(req, resp, error: PoolBusy, params) -> None:
    resp.set_header("Retry-After", str(error.retry_after))
    _write_error(req, resp, 503, str(error))


async def unexpected_error(req, resp, error: Exception, params) -> None:
    if isinstance(error, falcon.HTTPError):
        http_error(req, resp, error)
        return
    logger.exception("unhandled error on %s %s", req.method, req.path)
    _write_error(req, resp, 500, "internal server error")


def http_error(req, resp, error: falcon.HTTPError) -> None:
    """Serializer for Falcon's own errors (unknown route, wrong method, 406, 413, 415)."""
    message = error.description or (error.title or "error").split(" ", 1)[-1].lower()
    if isinstance(error, falcon.HTTPNotFound) and not error.description:
        message = "not found"
    if error.headers:
        resp.set_headers(error.headers)
    _write_error(req, resp, error.status_code, message, getattr(error, "supported", None))


def install(app: falcon.asgi.App) -> None:
    app.add_error_handler(Exception, unexpected_error)
    app.add_error_handler(EngineError, engine_error)
    app.add_error_handler(LicenseRequired, license_required)
    app.add_error_handler(StoreUnavailable, store_unavailable)
    app.add_error_handler(PoolBusy, pool_busy)
    app.set_error_serializer(lambda req, resp, error: http_error(req, resp, error))
