"""Starting a real `zizq serve` subprocess and talking to it over HTTP.

The executable is `python -m zizq` unless ZIZQ_BINARY names another command
(the frozen binary), so the same suite tests both.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import orjson

LISTENING = re.compile(r"^Listening on (\w+)://(\S+) \((primary|admin)\)$")
START_TIMEOUT_S = 30.0


def tls_context(
    ca: Path | str, cert: Path | str | None = None, key: Path | str | None = None
) -> ssl.SSLContext:
    """A client context trusting `ca` and, for mutual TLS, presenting `cert` and `key`."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context


def zizq_command() -> list[str]:
    binary = os.environ.get("ZIZQ_BINARY")
    return shlex.split(binary) if binary else [sys.executable, "-m", "zizq"]


class ZizqServer:
    """A running `zizq serve --port 0` with its own root dir."""

    def __init__(self, root_dir: Path, *args: str, env: dict | None = None) -> None:
        self.root_dir = Path(root_dir)
        self.args = list(args)
        self.env = env
        self.lines: list[str] = []
        self._line_queue: queue.Queue[str | None] = queue.Queue()
        self.proc: subprocess.Popen | None = None
        self.urls: dict[str, str] = {}

    # -- process control ------------------------------------------------------

    def start(self) -> ZizqServer:
        cmd = [
            *zizq_command(),
            "serve",
            "--root-dir",
            str(self.root_dir),
            "--port",
            "0",
            "--admin-port",
            "0",
            *self.args,
        ]
        env = dict(os.environ)
        env.update(self.env or {})
        self.lines = []
        self._line_queue = queue.Queue()
        self.urls = {}
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        # The thread gets this run's queue: after a restart, the old process's
        # end-of-output marker must not land in the new run's queue.
        self._pump = threading.Thread(
            target=self._pump_output, args=(self.proc, self._line_queue), daemon=True
        )
        self._pump.start()
        wanted = {"primary"} if "--no-admin" in self.args else {"primary", "admin"}
        deadline = time.monotonic() + START_TIMEOUT_S
        while not wanted.issubset(self.urls):
            line = self.wait_for_line(lambda _line: True, deadline - time.monotonic())
            match = LISTENING.match(line)
            if match:
                scheme, addr, api = match.groups()
                self.urls[api] = f"{scheme}://{addr}"
        return self

    def _pump_output(self, proc: subprocess.Popen, lines: queue.Queue) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            lines.put(line)
        lines.put(None)

    def _drain(self, timeout: float = 10.0) -> None:
        """Wait until the output pipe closes, i.e. every process holding it has exited.

        A one-file frozen binary is two processes; the server outlives the killed
        launcher by a few milliseconds, still holding the port and the store lock.
        """
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.join(timeout)

    def wait_for_line(self, predicate, timeout: float) -> str:
        """Next output line matching predicate; raises if none within timeout or on exit."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching output line; output so far:\n{self.output}")
            try:
                line = self._line_queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"zizq exited ({self.proc.poll()}); output:\n{self.output}")
            if predicate(line):
                return line

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def url(self) -> str:
        return self.urls["primary"]

    @property
    def admin_url(self) -> str:
        return self.urls["admin"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise
        self._drain()
        return code

    def kill(self) -> None:
        """kill -9: no chance to flush or clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self._drain()

    def restart(self) -> ZizqServer:
        self.stop()
        return self.start()


# -- HTTP clients ----------------------------------------------------------------

FORMATS = ("json", "msgpack")
MEDIA = {"json": "application/json", "msgpack": "application/msgpack"}


class Api:
    """A blocking client speaking JSON or MessagePack over HTTP/1.1 or h2c."""

    def __init__(
        self,
        base_url: str,
        fmt: str = "json",
        http2: bool = False,
        timeout: float = 15.0,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        """`verify` is the TLS context for an https:// server (see `tls_context`)."""
        self.fmt = fmt
        self.http2 = http2
        self.client = httpx.Client(
            base_url=base_url,
            http1=not http2,
            http2=http2,
            timeout=timeout,
            **({"verify": verify} if verify is not None else {}),
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def encode(self, body) -> bytes:
        return msgpack.packb(body) if self.fmt == "msgpack" else orjson.dumps(body)

    def decode(self, response: httpx.Response):
        if not response.content:
            return None
        media = response.headers.get("content-type", "")
        if "msgpack" in media:
            return msgpack.unpackb(response.content, strict_map_key=False)
        return orjson.loads(response.content)

    def request(
        self,
        method: str,
        path: str,
        body=None,
        *,
        raw: bytes | None = None,
        headers: dict | None = None,
    ):
        """Returns (status, decoded body or None, response)."""
        hdrs = {"accept": MEDIA[self.fmt]}
        content = raw
        if body is not None:
            content = self.encode(body)
        if content is not None:
            hdrs["content-type"] = MEDIA[self.fmt]
        hdrs.update(headers or {})
        response = self.client.request(method, path, content=content, headers=hdrs)
        if response.http_version != ("HTTP/2" if self.http2 else "HTTP/1.1"):
            raise AssertionError(
                f"expected {'h2c' if self.http2 else 'HTTP/1.1'}, got {response.http_version}"
            )
        return response.status_code, self.decode(response), response

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def enqueue(self, queue: str = "default", type: str = "test", payload=None, **fields) -> dict:
        body = {
            "queue": queue,
            "type": type,
            "payload": {} if payload is None else payload,
            **fields,
        }
        status, job, _ = self.post("/jobs", body)
        assert status == 201, (status, job)
        return job

    def ack(self, job_id: str) -> int:
        return self.post(f"/jobs/{job_id}/success")[0]


class TakeStream:
    """GET /jobs/take read on a background thread; every read has a timeout."""

    HEARTBEAT = object()

    def __init__(
        self,
        base_url: str,
        queues: str | None = None,
        prefetch: int | None = None,
        fmt: str = "json",
        http2: bool = False,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        params = {}
        if queues is not None:
            params["queue"] = queues
        if prefetch is not None:
            params["prefetch"] = str(prefetch)
        accept = (
            "application/vnd.zizq.msgpack-stream" if fmt == "msgpack" else "application/x-ndjson"
        )
        self.fmt = fmt
        self.client = httpx.Client(
            base_url=base_url,
            http1=not http2,
            http2=http2,
            timeout=httpx.Timeout(30.0),
            **({"verify": verify} if verify is not None else {}),
        )
        self._items: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._connected = threading.Event()
        self.status: int | None = None
        self._socket: socket.socket | None = None
        self.content_type: str | None = None
        self._thread = threading.Thread(target=self._run, args=(params, accept), daemon=True)
        self._thread.start()
        if not self._connected.wait(15):
            raise TimeoutError("take stream did not connect")

    def _run(self, params: dict, accept: str) -> None:
        try:
            with self.client.stream(
                "GET", "/jobs/take", params=params, headers={"accept": accept}
            ) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type")
                stream = response.extensions.get("network_stream")
                self._socket = stream.get_extra_info("socket") if stream is not None else None
                self._connected.set()
                buffer = b""
                for chunk in response.iter_raw():
                    buffer += chunk
                    buffer = self._parse(buffer)
                    if self._closed.is_set():
                        return
        except Exception as exc:  # connection closed by us or by the server
            self._items.put(exc)
        finally:
            self._connected.set()
            self._items.put(None)

    def _parse(self, buffer: bytes) -> bytes:
        if self.fmt == "msgpack":
            while len(buffer) >= 4:
                size = int.from_bytes(buffer[:4], "big")
                if len(buffer) < 4 + size:
                    break
                frame, buffer = buffer[4 : 4 + size], buffer[4 + size :]
                self._items.put(
                    self.HEARTBEAT if size == 0 else msgpack.unpackb(frame, strict_map_key=False)
                )
            return buffer
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            self._items.put(self.HEARTBEAT if not line.strip() else orjson.loads(line))
        return buffer

    def next_item(self, timeout: float = 10.0):
        """A job dict, TakeStream.HEARTBEAT, or None when the stream ended."""
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("nothing arrived on the take stream") from None
        if isinstance(item, Exception):
            return None
        return item

    def next_job(self, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            item = self.next_item(max(0.01, deadline - time.monotonic()))
            if item is None:
                raise EOFError("take stream ended")
            if item is not self.HEARTBEAT:
                return item

    def jobs(self, count: int, timeout: float = 10.0) -> list[dict]:
        return [self.next_job(timeout) for _ in range(count)]

    def expect_no_job(self, wait: float = 0.5) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                item = self.next_item(deadline - time.monotonic())
            except TimeoutError:
                return
            assert item is self.HEARTBEAT or item is None, f"unexpected job {item}"

    def iter_jobs(self, timeout: float = 10.0) -> Iterator[dict]:
        while True:
            yield self.next_job(timeout)

    def close(self) -> None:
        """Drop the connection at once, as a crashed worker would."""
        self._closed.set()
        if self._socket is not None:
            # shutdown() wakes the reader thread blocked in recv and sends FIN now.
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self.client.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TakeStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
