"""Finding 2 (freeze): jq runs isolated from the serving process.

Against a real `zizq serve`: runaway jq filters (endless recursion, a long
computation, a huge allocation) answer 400 naming the limit they hit, `/health`
keeps answering fast meanwhile, SIGTERM still stops the server, and jq sees none
of the server's environment. Counting, listing, bulk PATCH and bulk DELETE are
each attacked.
"""

from __future__ import annotations

import re
import signal
import threading
import time

import httpx
import pytest

RUNAWAYS = {
    "recursion": "def f: f; f",
    "long": "[limit(1500000; range(1e9))]",
    "memory": "[range(1e8)]",
}
LIMIT_FLAGS = ("--jq-time-limit", "2s", "--jq-memory-limit", "256MiB")
LIMIT_MESSAGE = re.compile(
    r"^filter: the jq program exceeded the (time limit of 2s|memory limit of 256 MiB)$"
)
SECRET = "SECRET-do-not-leak-4242"


@pytest.fixture
def jq_server(start_server):
    server = start_server(*LIMIT_FLAGS, env={"ZIZQ_TEST_SECRET": SECRET, "MY_TOKEN": SECRET})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for n in range(3):
            response = client.post("/jobs", json={"queue": "q", "type": "t", "payload": {"n": n}})
            assert response.status_code == 201, response.text
    return server


class HealthProbe:
    """GET /health every 15 ms on a kept-alive connection; remembers the worst latency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.count = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.get("/health")
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.worst = max(self.worst, time.monotonic() - started)
                self.count += 1
                self._stop.wait(0.015)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def attack(server, method: str, path: str, expression: str, body=None) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return client.request(method, path, params={"filter": expression}, json=body)


@pytest.mark.parametrize("name", sorted(RUNAWAYS))
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/jobs/count", None),
        ("GET", "/jobs", None),
        ("DELETE", "/jobs", None),
        ("PATCH", "/jobs", {"priority": 7}),
    ],
    ids=["count", "list", "delete", "patch"],
)
def test_runaway_filter_is_a_400_and_health_keeps_answering(jq_server, name, method, path, body):
    with HealthProbe(jq_server.url) as probe:
        started = time.monotonic()
        response = attack(jq_server, method, path, RUNAWAYS[name], body)
        took = time.monotonic() - started
    print(f"\n{method} {path} {name}: {response.status_code} in {took:.2f}s; worst /health "
          f"{probe.worst * 1000:.1f} ms over {probe.count} probes")  # fmt: skip
    assert response.status_code == 400, response.text
    assert LIMIT_MESSAGE.match(response.json()["error"]), response.json()
    assert took < 10, took
    assert not probe.failures, probe.failures
    assert probe.count >= 10
    assert probe.worst < 1.0, f"/health took {probe.worst:.3f}s while jq ran"
    # Nothing was changed by the failed request, and the server still evaluates jq.
    listed = httpx.get(f"{jq_server.url}/jobs", timeout=10).json()["jobs"]
    assert len(listed) == 3 and all(job["priority"] == 32768 for job in listed)
    count = httpx.get(f"{jq_server.url}/jobs/count", params={"filter": ".n >= 1"}, timeout=10)
    assert count.json() == {"count": 2}


def test_sigterm_stops_the_server_while_a_filter_runs(start_server):
    server = start_server("--jq-time-limit", "60s")
    httpx.post(f"{server.url}/jobs", json={"queue": "q", "type": "t", "payload": {}}, timeout=10)
    answers: list = []

    def run() -> None:
        try:
            answers.append(attack(server, "GET", "/jobs/count", RUNAWAYS["recursion"]))
        except httpx.HTTPError as exc:  # the server may close the connection as it stops
            answers.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(1.0)  # the runaway is in its worker by now
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=15)
    took = time.monotonic() - started
    print(f"\nSIGTERM during a runaway filter: exit {code} after {took:.2f}s")
    thread.join(15)
    assert code == 0, server.output
    assert took < 5, took
    assert "Traceback" not in server.output, server.output


def test_jq_sees_an_empty_environment(jq_server):
    def count(expression: str) -> int:
        response = attack(jq_server, "GET", "/jobs/count", expression)
        assert response.status_code == 200, response.text
        return response.json()["count"]

    assert count('$ENV | tostring | contains("SECRET")') == 0
    assert count('env | tostring | contains("SECRET")') == 0
    assert count("$ENV == {} and env == {}") == 3
    assert count('[$ENV[], env[]] | map(select(contains("SECRET"))) | length == 0') == 3
    listed = attack(jq_server, "GET", "/jobs", '$ENV | has("ZIZQ_TEST_SECRET")')
    assert listed.status_code == 200 and listed.json()["jobs"] == []


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ('import "a" as a; .', "filter: module directives (import, include) are not allowed"),
        ('include "passwd" {search: "/etc"}; .', "filter: module directives"),
        (".n | startswith(", "filter: invalid jq expression: syntax error"),
        ("." * 20_000, "filter: jq expression longer than 16384 bytes"),
    ],
    ids=["import", "include", "syntax", "long"],
)
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_rejected_programs(jq_server, expression, message, method):
    response = attack(jq_server, method, "/jobs/count" if method == "GET" else "/jobs", expression)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(message), response.json()
    assert httpx.get(f"{jq_server.url}/jobs/count", timeout=10).json() == {"count": 3}
