"""The bare-route ceiling for `ratios.py`: Falcon + Granian doing nothing but HTTP and JSON.

    .venv/bin/python scripts/bench/peers/ceiling.py     # prints "Listening on http://...:PORT (primary)"

One ASGI route, `POST /jobs`: read the body, parse it as JSON (orjson, as zizq does), answer
201 with the parsed object serialized again. It is served by zizq's own `Listener`
(zizq/listener.py), so Granian runs embedded in a uvloop event loop with exactly the settings
of zizq's primary listener (ASGINL interface, HTTP mode auto, keep-alive, backlog,
backpressure, HTTP/2 limits), and with the GC settings `zizq serve` uses. What zizq's
`POST /jobs` reaches as a share of this is the share of the HTTP framework's ceiling it keeps.
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from pathlib import Path

# The checkout this script sits in, so the listener settings are those of the server benchmarked.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import falcon  # noqa: E402
import falcon.asgi  # noqa: E402
import orjson  # noqa: E402

from zizq.listener import Listener, connection_limits, raise_open_file_limit  # noqa: E402


class BareJobs:
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = orjson.loads(await req.stream.read())
        resp.status = falcon.HTTP_201
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps(body)


def create_app() -> falcon.asgi.App:
    app = falcon.asgi.App(cors_enable=False)
    app.add_route("/jobs", BareJobs())
    return app


async def main(host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    primary_slots, _admin = connection_limits(raise_open_file_limit())
    listener = Listener(create_app(), host, port, api="primary", max_connections=primary_slots)
    gc.freeze()  # as `zizq serve` does once its indexes are built
    gc.set_threshold(50_000, 20, 20)
    try:
        bound_host, bound_port = await listener.start()
        print(f"Listening on http://{bound_host}:{bound_port} (primary)", flush=True)
        await stop.wait()
    finally:
        await listener.stop()
    return 0


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(main("127.0.0.1", 0)))
    sys.exit(uvloop.run(main("127.0.0.1", 0)))
