"""Content negotiation and (de)serialisation of bodies: JSON and MessagePack.

Payloads are stored as MessagePack; a JSON response decodes them on the way out.

Both parsers hold the GIL, so a big body is a stall of the event loop: bodies
are capped at MAX_BODY_BYTES, the cyclic garbage collector is paused while a
decoded body is alive (it would otherwise rescan it again and again: a 6 MiB
body of small objects parsed in 600 ms instead of 110 ms), and a big
MessagePack body is parsed in slices with pauses between them. orjson has no incremental
mode; its worst case is about 25-30 ns per byte (~55 ms for 2 MiB of `[[]]`),
while a realistic bulk of 10,000 jobs parses in a few milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import inspect
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import falcon
import msgpack
import orjson

from zizq.queue.errors import InvalidInput
from zizq.queue.timeslice import TimeSlicer

JSON = "application/json"
MSGPACK = "application/msgpack"
NDJSON = "application/x-ndjson"
MSGPACK_STREAM = "application/vnd.zizq.msgpack-stream"
SSE = "text/event-stream"
FORM = "application/x-www-form-urlencoded"

# What 406 and 415 bodies list as `supported`, as the reference does.
SUPPORTED_TYPES = (JSON, MSGPACK)
SUPPORTED_STREAMS = (SSE, NDJSON, MSGPACK_STREAM)

MSGPACK_ALIASES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
# The worst body costs time and memory in proportion to its size, whatever the
# parser: 4 MiB of JSON `[[],[],...]` parses in ~110 ms holding the GIL, and 4 MiB
# of MessagePack empty maps (1 byte each) become 4 million dicts, ~300 MB. 2 MiB
# (the reference's own default body limit, axum's 2 MB) keeps the worst body near
# 55 ms / 150 MB and still holds a bulk of 10,000 jobs of ~200 bytes (measured:
# 16 MiB gave 0.3-0.8 s and 1.2 GB).
MAX_BODY_BYTES = 2 * 1024 * 1024
# Bodies this large decode at most two at a time, so concurrent ones cannot add up.
BIG_BODY_BYTES = 1024 * 1024
BIG_BODIES_AT_ONCE = 2
# A MessagePack body is parsed this many bytes at a time once it is larger: even
# the costliest content (1-byte empty maps, ~64 ns each) takes < 5 ms per slice.
MSGPACK_SLICE_BYTES = 64 * 1024
# Bodies up to this size are decoded and parsed in one go (see read_parsed).
SMALL_BODY_BYTES = 16 * 1024
PAYLOAD_ERROR = "payload_error"  # set, with payload null, on a job whose payload is unusable
ENCODE_ERRORS = (TypeError, ValueError, OverflowError)  # what orjson / msgpack raise
HEARTBEAT = {NDJSON: b"\n", MSGPACK_STREAM: b"\x00\x00\x00\x00", SSE: b": heartbeat\n\n"}


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


class NotAcceptable(falcon.HTTPNotAcceptable):
    """406 whose body lists the media types we can produce (`supported`)."""

    def __init__(self, accept: str, supported: tuple[str, ...]) -> None:
        shown = accept if len(accept) <= 200 else accept[:200] + "..."
        super().__init__(
            description=f"not acceptable: cannot produce {shown}; use one of {', '.join(supported)}"
        )
        self.supported = list(supported)


class UnsupportedMediaType(falcon.HTTPUnsupportedMediaType):
    """415 whose body lists the request body types we read (`supported`)."""

    def __init__(self, content_type: str) -> None:
        shown = content_type if len(content_type) <= 200 else content_type[:200] + "..."
        super().__init__(description=f"unsupported media type {shown}; use {JSON} or {MSGPACK}")
        self.supported = list(SUPPORTED_TYPES)


def _choose(req: falcon.Request, offered: list[str], default: str) -> str:
    accept = req.accept
    if not accept or accept == "*/*":
        return default
    best = req.client_prefers(offered)
    if best is None:
        raise NotAcceptable(accept, SUPPORTED_TYPES)
    return best


def response_type(req: falcon.Request) -> str:
    """JSON or MessagePack, from the Accept header (406 if neither is acceptable)."""
    chosen = _choose(req, [JSON, *MSGPACK_ALIASES], JSON)
    return MSGPACK if chosen in MSGPACK_ALIASES else JSON


_STREAM_CHOICES = (
    # The reference's order of precedence, whatever the q-values: an Accept naming
    # several of these gets the first (clients send exactly one).
    ((SSE,), SSE),
    ((MSGPACK_STREAM, *MSGPACK_ALIASES), MSGPACK_STREAM),
    ((NDJSON, JSON, "*/*", "application/*"), NDJSON),
)


def stream_type(req: falcon.Request) -> str:
    """The take stream's framing: SSE, MessagePack frames or NDJSON (the default).

    No Accept, `*/*`, `application/json` or NDJSON mean NDJSON; MessagePack (the
    stream type or plain `application/msgpack`) means length-prefixed frames;
    `text/event-stream` means Server-Sent Events. Anything else is a 406.
    """
    accept = req.get_header("Accept")
    if accept is None or not accept.strip():
        return NDJSON
    ranges = set()
    for part in accept.split(","):
        media, _, params = part.partition(";")
        if _q_is_zero(params):
            continue  # q=0 means "not this one"
        ranges.add(media.strip().lower())
    for names, chosen in _STREAM_CHOICES:
        if ranges.intersection(names):
            return chosen
    raise NotAcceptable(accept, SUPPORTED_STREAMS)


def _q_is_zero(params: str) -> bool:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip()) == 0
            except ValueError:
                return False
    return False


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


async def read_parsed(
    req: falcon.Request,
    parse: Callable[[Any, bool], Any],
    required: bool = True,
) -> Any:
    """Read and decode the body, then return `parse(value, from_json)` (awaited if async).

    413 when the body is too large, 415 for an unknown Content-Type, 400 when
    it does not decode. `from_json` tells the parser that orjson's guarantees
    hold (see zizq.queue.payload).

    The decoded value lives only in here, and the cyclic garbage collector is
    paused while it does: it never forms cycles, and a collection that ran
    while it is alive would scan every object of it (~90 ms for the 5.6
    million objects 16 MiB of JSON can hold), once per generation. Freed by
    reference counting before the collector resumes, it leaves it nothing to
    do. The body bytes are read first, with the collector running, so a slow
    client cannot keep it paused; bodies over BIG_BODY_BYTES then wait for one
    of BIG_BODIES_AT_ONCE slots, which bounds the memory decoded bodies take.
    """
    data = await _read_bytes(req)
    content_type = (req.content_type or JSON).split(";", 1)[0].strip().lower()
    if not data:
        if required:
            raise InvalidInput("body: is required")
        return await _call(parse, None, False)
    if len(data) <= SMALL_BODY_BYTES:
        # The common case (one job, an ack): a few hundred objects at most, too few for
        # the collector pause or the coroutine layers below to pay for themselves.
        result = parse(*_decode_now(content_type, data))
        return await result if inspect.isawaitable(result) else result
    slot = _big_body_slot() if len(data) > BIG_BODY_BYTES else contextlib.nullcontext()
    async with slot:
        return await _decode_and_parse(content_type, data, parse)


async def _decode_and_parse(
    content_type: str, data: bytes, parse: Callable[[Any, bool], Any]
) -> Any:
    with gc_paused():
        value: Any = None
        try:
            value, from_json = await _decode(content_type, data)
            return await _call(parse, value, from_json)
        except BaseException as exc:
            # The traceback holds the parser's frames and so the value: drop them.
            value = None
            if exc.__traceback__ is not None:
                traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            value = None


_big_bodies: asyncio.Semaphore | None = None


def _big_body_slot() -> asyncio.Semaphore:
    global _big_bodies
    if _big_bodies is None:  # created on first use, inside the serving loop
        _big_bodies = asyncio.Semaphore(BIG_BODIES_AT_ONCE)
    return _big_bodies


async def _call(parse: Callable[[Any, bool], Any], value: Any, from_json: bool) -> Any:
    result = parse(value, from_json)
    return await result if inspect.isawaitable(result) else result


async def _read_bytes(req: falcon.Request) -> bytes:
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise falcon.HTTPPayloadTooLarge(description=f"request body exceeds {MAX_BODY_BYTES} bytes")
    data = await req.stream.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise falcon.HTTPPayloadTooLarge(description=f"request body exceeds {MAX_BODY_BYTES} bytes")
    return data


def _decode_now(content_type: str, data: bytes) -> tuple[Any, bool]:
    """A body one call decodes: JSON, or MessagePack of at most MSGPACK_SLICE_BYTES."""
    # curl -d sends application/x-www-form-urlencoded unless told otherwise; no
    # endpoint takes a form, so reading such a body as JSON is the helpful choice.
    if content_type in (JSON, FORM) or content_type.endswith("+json"):
        try:
            return orjson.loads(data), True
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"body: malformed JSON ({exc})") from None
    if content_type in MSGPACK_ALIASES:
        try:
            return msgpack.unpackb(data, strict_map_key=False), False
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise _bad_msgpack(exc) from None
    raise UnsupportedMediaType(content_type)


async def _decode(content_type: str, data: bytes) -> tuple[Any, bool]:
    if content_type in MSGPACK_ALIASES and len(data) > MSGPACK_SLICE_BYTES:
        try:
            return await _unpack(data), False
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise _bad_msgpack(exc) from None
    return _decode_now(content_type, data)


def _bad_msgpack(exc: Exception) -> InvalidInput:
    return InvalidInput(f"body: malformed MessagePack ({msgpack_problem(exc)})")


_gc_pausers = 0  # requests inside gc_paused(); the collector resumes when the last leaves


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while decoded bodies are alive (it may span awaits: count holders)."""
    global _gc_pausers
    if _gc_pausers == 0:
        if not gc.isenabled():  # paused by someone else: leave it to them
            yield
            return
        gc.disable()
    _gc_pausers += 1
    try:
        yield
    finally:
        _gc_pausers -= 1
        if _gc_pausers == 0:
            gc.enable()


async def _unpack(data: bytes) -> Any:
    """One MessagePack object filling `data` (a body larger than a slice), parsed
    slice by slice.

    msgpack's Unpacker keeps a half-built object between feeds, so each slice
    costs only its own bytes; between slices other requests get the loop.
    Limits on string, array and map lengths default to the buffer size, so a
    header announcing 4 billion elements is refused, not allocated.
    """
    unpacker = msgpack.Unpacker(strict_map_key=False, max_buffer_size=len(data))
    view = memoryview(data)
    slicer = TimeSlicer()
    for start in range(0, len(data), MSGPACK_SLICE_BYTES):
        unpacker.feed(view[start : start + MSGPACK_SLICE_BYTES])
        try:
            value = unpacker.unpack()
        except msgpack.OutOfData:
            await slicer.maybe_pause()
            continue
        if unpacker.tell() != len(data):
            raise msgpack.ExtraData(value, b"")
        return value
    raise msgpack.OutOfData("incomplete input")


def msgpack_problem(exc: Exception) -> str:
    """What msgpack found wrong with bytes it was given (a body or a stored payload)."""
    if isinstance(exc, msgpack.StackError):
        return "nested too deeply"
    if isinstance(exc, msgpack.ExtraData):
        return "extra data after the value"
    if isinstance(exc, msgpack.OutOfData):
        return "incomplete input"
    return str(exc) or type(exc).__name__


def job_with_payload(view: dict, payload: bytes | None) -> dict:
    """The job view with its decoded payload (null plus payload_error if unreadable)."""
    if payload is None:
        view["payload"] = None
        return view
    try:
        view["payload"] = msgpack.unpackb(payload, strict_map_key=False)
    except Exception as exc:  # corrupt stored bytes: show the job, not a 500
        view["payload"] = None
        view[PAYLOAD_ERROR] = f"the stored payload cannot be read ({msgpack_problem(exc)})"
    return view


def respond_jobs(
    req: falcon.Request,
    resp: falcon.Response,
    obj: Any,
    jobs: list[dict],
    media: str,
    status: int = 200,
) -> None:
    """respond() for a body holding jobs with payloads, never failing on one of them.

    Payloads accepted today always encode; one stored by an older version may
    not (nested past orjson's 254 levels, binary map keys). The whole body is
    tried first (the usual, fast path); if it fails, each job whose payload
    cannot be encoded as deep as a list page holds it gets `payload: null` and
    a `payload_error` saying why, and the rest are answered as usual.
    """
    try:
        data = encode(media, obj)
    except ENCODE_ERRORS:
        for job in jobs:
            try:
                encode(media, {"jobs": [job]})
            except ENCODE_ERRORS as exc:
                job["payload"] = None
                job[PAYLOAD_ERROR] = (
                    f"the stored payload cannot be encoded as {_name(media)} ({exc})"
                )
        data = encode(media, obj)
    resp.status = status
    resp.content_type = media
    resp.data = data


def _name(media: str) -> str:
    return "MessagePack" if "msgpack" in media else "JSON"


def stream_frame(media_type: str, obj: dict) -> bytes:
    """One job of a take stream; ValueError (saying why) if it cannot be delivered."""
    if PAYLOAD_ERROR in obj:
        raise ValueError(obj[PAYLOAD_ERROR])
    try:
        if media_type == MSGPACK_STREAM:
            body = msgpack.packb(obj)
            return len(body).to_bytes(4, "big") + body
        if media_type == SSE:
            # orjson never writes a newline, so the job is one `data:` line.
            return b"data: " + dumps_json(obj) + b"\n\n"
        return dumps_json(obj) + b"\n"
    except ENCODE_ERRORS as exc:
        raise ValueError(
            f"the stored payload cannot be encoded as {_name(media_type)} ({exc})"
        ) from None
