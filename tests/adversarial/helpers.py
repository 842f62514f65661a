"""Checks shared by the adversarial tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx

STATUSES = ("scheduled", "ready", "in_flight", "completed", "dead")


def health_latency(base_url: str, timeout: float = 5.0) -> float:
    """Seconds one GET /health took on a fresh connection (raises if it did not answer 200)."""
    started = time.monotonic()
    response = httpx.get(f"{base_url}/health", timeout=timeout)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return elapsed


def scan_counts(base_url: str, timeout: float = 30.0) -> dict[str, int]:
    """Jobs per status as a full listing walk sees them (the store, not the counters)."""
    counts = dict.fromkeys(STATUSES, 0)
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        path = "/jobs?limit=2000"
        while path:
            page = client.get(path).json()
            for job in page["jobs"]:
                counts[job["status"]] += 1
            path = page["pages"]["next"]
    return counts


def counter_counts(base_url: str, timeout: float = 30.0) -> dict[str, int]:
    """Jobs per status as GET /jobs/count answers from the in-memory counters."""
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        return {
            status: client.get("/jobs/count", params={"status": status}).json()["count"]
            for status in STATUSES
        }


def assert_counters_match_scan(base_url: str) -> None:
    scanned = scan_counts(base_url)
    counted = counter_counts(base_url)
    assert counted == scanned, f"counters {counted} != scan {scanned}"
    assert all(n >= 0 for n in counted.values()), counted


# -- take-stream actors (fairness, fuzzing) ------------------------------------------


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


def count_jobs(base_url: str, timeout: float = 10.0, **params: str) -> int:
    response = httpx.get(f"{base_url}/jobs/count", params=params, timeout=timeout)
    assert response.status_code == 200, response.text
    return response.json()["count"]


def enqueue_many(base_url: str, count: int, queue: str = "default", chunk: int = 1000) -> None:
    """Enqueue `count` small jobs with POST /jobs/bulk."""
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for start in range(0, count, chunk):
            jobs = [
                {"queue": queue, "type": "t", "payload": {"n": start + i}}
                for i in range(min(chunk, count - start))
            ]
            response = client.post("/jobs/bulk", json={"jobs": jobs})
            assert response.status_code in (200, 201), response.text


class GreedyTake:
    """A take stream that never reads: a stuck or hostile worker holding its jobs.

    A raw socket sends the request and then ignores whatever arrives; closing
    it drops the connection (the server returns its jobs to ready).
    """

    def __init__(
        self,
        base_url: str,
        prefetch: int = 100_000,
        queues: str | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        host, port = base_url.split("://", 1)[1].rsplit(":", 1)
        query = f"prefetch={prefetch}" + (f"&queue={queues}" if queues else "")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small window makes the server's writes block sooner
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        self.sock.sendall(
            f"GET /jobs/take?{query} HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: application/x-ndjson\r\n\r\n".encode()
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def __enter__(self) -> GreedyTake:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AckingWorker:
    """A well-behaved worker on a background thread: takes jobs and acks each one."""

    def __init__(self, base_url: str, prefetch: int = 10, queues: str | None = None) -> None:
        from tests.e2e.zizq_process import TakeStream  # the e2e suite's stream reader

        self.acked: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._stream = TakeStream(base_url, queues=queues, prefetch=prefetch)
        self._client = httpx.Client(base_url=base_url, timeout=15.0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._stream.next_job(timeout=0.2)
            except TimeoutError:
                continue
            except EOFError:
                return
            response = self._client.post(f"/jobs/{job['id']}/success")
            if response.status_code == 204:
                self.acked.append(job["id"])
            else:
                self.errors.append(f"ack {job['id']}: {response.status_code} {response.text}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._stream.close()
        self._client.close()

    def __enter__(self) -> AckingWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_jobs(client: httpx.Client) -> list[dict]:
    """Every job, following the listing's `next` links (pages of 2,000)."""
    jobs, path = [], "/jobs?limit=2000"
    while path:
        response = client.get(path)
        assert response.status_code == 200, response.text
        page = response.json()
        jobs += page["jobs"]
        path = page["pages"]["next"]
    return jobs


def clients(url: str, count: int) -> list[httpx.Client]:
    """Connected clients, half HTTP/1.1 and half h2c, each with its connection open."""
    made = []
    for index in range(count):
        h2 = index % 2 == 1
        client = httpx.Client(base_url=url, http1=not h2, http2=h2, timeout=30.0)
        response = client.get("/health")
        assert response.http_version == ("HTTP/2" if h2 else "HTTP/1.1")
        made.append(client)
    return made


def all_at_once(calls: list) -> list:
    """Run the calls on threads released together; returns their results (or exceptions)."""
    results: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[index] = calls[index]()
        except Exception as exc:  # reported by the caller
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a client never got an answer"
    return results
