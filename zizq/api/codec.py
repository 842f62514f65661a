"""Content negotiation and (de)serialisation of bodies: JSON and MessagePack.

Payloads are stored as MessagePack; a JSON response decodes them on the way out.
"""

from __future__ import annotations

import base64
from typing import Any

import falcon
import msgpack
import orjson

from zizq.queue.errors import InvalidInput

JSON = "application/json"
MSGPACK = "application/msgpack"
NDJSON = "application/x-ndjson"
MSGPACK_STREAM = "application/vnd.zizq.msgpack-stream"
FORM = "application/x-www-form-urlencoded"

MSGPACK_ALIASES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
MAX_BODY_BYTES = (
    64 * 1024 * 1024
)  # large enough for a big bulk enqueue, small enough to refuse abuse
HEARTBEAT = {NDJSON: b"\n", MSGPACK_STREAM: b"\x00\x00\x00\x00"}


def _json_default(value: Any) -> Any:
    # MessagePack can carry types JSON cannot; show them rather than fail the response.
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    return str(value)


_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps_json(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_json_default, option=_JSON_OPTIONS)


def encode(media_type: str, obj: Any) -> bytes:
    if media_type == MSGPACK:
        return msgpack.packb(obj)
    return dumps_json(obj)


def _choose(req: falcon.Request, offered: list[str], default: str) -> str:
    accept = req.accept
    if not accept or accept == "*/*":
        return default
    best = req.client_prefers(offered)
    if best is None:
        raise falcon.HTTPNotAcceptable(
            description=f"cannot produce {accept}; use one of {', '.join(offered)}"
        )
    return best


def response_type(req: falcon.Request) -> str:
    """JSON or MessagePack, from the Accept header (406 if neither is acceptable)."""
    chosen = _choose(req, [JSON, *MSGPACK_ALIASES], JSON)
    return MSGPACK if chosen in MSGPACK_ALIASES else JSON


def stream_type(req: falcon.Request) -> str:
    return _choose(req, [NDJSON, MSGPACK_STREAM], NDJSON)


def respond(
    req: falcon.Request,
    resp: falcon.Response,
    obj: Any,
    status: int = 200,
    media: str | None = None,
) -> None:
    media = media or response_type(req)
    resp.status = status
    resp.content_type = media
    resp.data = encode(media, obj)


async def read_body(req: falcon.Request, required: bool = True) -> Any:
    """Decode the request body by Content-Type; 413 when too large, 415 when unknown."""
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise falcon.HTTPPayloadTooLarge(description=f"request body exceeds {MAX_BODY_BYTES} bytes")
    data = await req.stream.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise falcon.HTTPPayloadTooLarge(description=f"request body exceeds {MAX_BODY_BYTES} bytes")
    content_type = (req.content_type or JSON).split(";", 1)[0].strip().lower()
    if not data:
        if required:
            raise InvalidInput("body: is required")
        return None
    # curl -d sends application/x-www-form-urlencoded unless told otherwise; no
    # endpoint takes a form, so reading such a body as JSON is the helpful choice.
    if content_type in (JSON, FORM) or content_type.endswith("+json"):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"body: malformed JSON ({exc})") from None
    if content_type in MSGPACK_ALIASES:
        try:
            return msgpack.unpackb(data, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise InvalidInput(f"body: malformed MessagePack ({exc})") from None
    raise falcon.HTTPUnsupportedMediaType(
        description=f"unsupported Content-Type {content_type}; use {JSON} or {MSGPACK}"
    )


def job_with_payload(view: dict, payload: bytes | None) -> dict:
    view["payload"] = None if payload is None else msgpack.unpackb(payload, strict_map_key=False)
    return view


def stream_frame(media_type: str, obj: dict) -> bytes:
    if media_type == MSGPACK_STREAM:
        body = msgpack.packb(obj)
        return len(body).to_bytes(4, "big") + body
    return dumps_json(obj) + b"\n"
