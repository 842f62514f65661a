"""A standing hypothesis fuzzer over the HTTP API, against one real `zizq serve` per test.

Every request (random bodies in JSON, MessagePack or garbage bytes under any
content type, random query strings and jq filters, random path segments) must
get an answer within REQUEST_TIMEOUT_S, never a 5xx, and a 4xx must carry
`{"error": str}` (or `{"not_found": [...]}` for a bulk ack). Real enqueues,
takes and acks are interleaved so there is state to break; after every
example `/health` must answer, and at the end of each test (and every
CHECK_EVERY examples) the counters must equal a scan of the store.

Cost: the `ci` profile (default) runs a fixed, derandomized set of examples
(CI_EXAMPLES in total, about a minute); for a longer local run:

    ZIZQ_FUZZ_EXAMPLES=100000 .venv/bin/pytest tests/adversarial/test_fuzz.py -p no:cacheprovider -s

which also randomizes the seed (printed; replay with ZIZQ_FUZZ_SEED=<seed>).
ZIZQ_FUZZ_KEEP_GOING=<file.jsonl> records every failing request there instead
of stopping at the first, to catalogue distinct failures.
"""

from __future__ import annotations

import json
import os
import random
import string
import time
from urllib.parse import quote

import httpx
import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from tests.adversarial.helpers import STATUSES, counter_counts, scan_counts
from tests.e2e.zizq_process import TakeStream

REQUEST_TIMEOUT_S = 20.0  # the jq time limit is 5 s; anything slower than this is a hang
CI_EXAMPLES = 3000
TOTAL_EXAMPLES = int(os.environ.get("ZIZQ_FUZZ_EXAMPLES", CI_EXAMPLES))
LONG_RUN = "ZIZQ_FUZZ_EXAMPLES" in os.environ
FUZZ_SEED = int(os.environ.get("ZIZQ_FUZZ_SEED", random.randrange(1 << 32) if LONG_RUN else 0))
KEEP_GOING = os.environ.get("ZIZQ_FUZZ_KEEP_GOING")
CHECK_EVERY = 200
# Shares of the total per test (writes get the most: they can corrupt state).
WEIGHTS = {"writes": 0.45, "queries": 0.3, "mixed": 0.25, "licensed": 0.2}


def fuzz_settings(share: str):
    examples = max(10, int(TOTAL_EXAMPLES * WEIGHTS[share]))
    print(
        f"\nfuzz[{share}]: {examples} examples, seed {FUZZ_SEED}, "
        f"derandomize={not LONG_RUN} (ZIZQ_FUZZ_EXAMPLES={TOTAL_EXAMPLES})"
    )
    return settings(
        max_examples=examples,
        derandomize=not LONG_RUN,
        deadline=None,  # the server's answer time is checked per request instead
        database=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        # No shrinking: examples share one server whose state they change, so a
        # replay is not the same test; the failure message names the request.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        stateful_step_count=10,
    )


# -- values ----------------------------------------------------------------------------

RESERVED = ",*?[]{}\\"
huge_ints = st.sampled_from(
    [2**63, -(2**63) - 1, 2**64, 10**30, -1, 0, 65535, 65536, 2**31, 4294967296]
)
names = st.one_of(
    st.sampled_from(["default", "q", "a", "b", "work", "émoji-🎉", "x y"]),
    st.text(min_size=0, max_size=12),
    st.text(alphabet=RESERVED + " \t\n\x00ab", min_size=1, max_size=5),
    st.sampled_from([" padded ", "", "a" * 1024, "a" * 1025, "é" * 513, "x" * 70000]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    huge_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def deep_values(draw) -> object:
    """Nesting around the 128-level payload limit and orjson's 254/1024."""
    depth = draw(st.sampled_from([127, 128, 129, 254, 255, 300, 1000, 1100]))
    value: object = draw(scalars)
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


payloads = st.one_of(json_values, json_values, deep_values())


def maybe(value_strategy, weight: int = 3):
    """Mostly a plausible value, sometimes any JSON value."""
    return st.one_of(*([value_strategy] * weight), json_values)


# Batch configs (pro): a few keys, and `when`/`fold` programs that fold, seal, fail on
# some payloads (`+` on mismatched types), yield no or several outputs, or do not compile.
# No runaway programs: each would cost the jq time limit on every dry run.
batch_jq = st.sampled_from(
    ["true", "false", "null", "$new", "$existing", "$existing + $new", "[$existing, $new]",
     "$existing * $new", "$new.n > 1", "length > 2", "empty", "1, 2", "error(\"x\")", "(",
     "$x", "$ENV", "input", "[range(1e6)] | length", "tojson | length < 50", ".a.b"]
)  # fmt: skip
batch_configs = st.fixed_dictionaries(
    {},
    optional={
        "key": maybe(st.sampled_from(["b1", "b2", "", "x" * 1025])),
        "when": maybe(batch_jq),
        "fold": maybe(batch_jq),
    },
)

JOB_FIELDS = {
    "queue": maybe(names),
    "type": maybe(names),
    "payload": payloads,
    "priority": maybe(st.integers(-5, 70000)),
    "ready_at": maybe(st.one_of(st.integers(0, 2**45), huge_ints)),
    "retry_limit": maybe(st.integers(-2, 100)),
    "backoff": maybe(
        st.fixed_dictionaries(
            {},
            optional={
                "base_ms": maybe(st.integers(-1, 10**7)),
                "exponent": maybe(st.floats(-2, 1000)),
                "jitter_ms": maybe(st.integers(-1, 10**7)),
            },
        )
    ),
    "retention": maybe(
        st.fixed_dictionaries(
            {},
            optional={
                "completed_ms": maybe(st.one_of(st.integers(-1, 10**9), huge_ints)),
                "dead_ms": maybe(st.one_of(st.integers(-1, 10**9), huge_ints)),
            },
        )
    ),
    "unique_key": st.one_of(
        st.sampled_from(["k1", "k2", "k3"]), st.text(max_size=5), names, json_values
    ),
    "unique_while": maybe(st.sampled_from(["queued", "active", "exists", "QUEUED", ""])),
    "batch": st.one_of(batch_configs, batch_configs, json_values),
}
PATCHABLE = ("queue", "priority", "ready_at", "retry_limit", "backoff", "retention")
extra_fields = st.dictionaries(st.text(max_size=8), json_values, max_size=2)
job_bodies = st.tuples(st.fixed_dictionaries({}, optional=JOB_FIELDS), extra_fields).map(
    lambda parts: {**parts[1], **parts[0]}
)
patch_bodies = st.fixed_dictionaries(
    {},
    optional={k: v for k, v in JOB_FIELDS.items() if k in PATCHABLE}
    | {"status": json_values, "payload": payloads},
)
failure_bodies = st.fixed_dictionaries(
    {},
    optional={
        "message": maybe(st.text(max_size=50)),
        "error_type": maybe(st.text(max_size=10)),
        "backtrace": maybe(st.text(max_size=50)),
        "retry_at": maybe(st.one_of(st.integers(-1, 2**45), huge_ints)),
        "kill": maybe(st.booleans()),
    },
)

# -- jq filters: a small grammar plus a few nasty ones ---------------------------------

jq_atoms = st.sampled_from(
    ['.', '.a', '.b', '.n', '.[0]', '.a.b', '1', '"x"', 'null', 'true', 'false', '[]', '{}',
     'length', 'keys', 'type', '.[]?', '..', 'empty', 'not', '$__loc__', 'now']
)  # fmt: skip
# Each of these runs until the jq time limit (5 s): rare, or CI would spend minutes on them.
RUNAWAY_PER_MILLE = 10 if LONG_RUN else 2
jq_runaway = st.sampled_from(
    [
        "def f: f; f",
        "[range(1e8)]",
        "[limit(1500000; range(1e9))]",
        "repeat(.)",
        "until(false; .)",
        '"x" * 100000000',
        "[range(1e6)] | length",
    ]
)
jq_nasty = st.sampled_from(
    [
        "$ENV",
        "env",
        "$ENV.PATH",
        "input",
        "inputs",
        "debug",
        'error("boom")',
        "error(null)",
        "[.[]?] | add",
        "@base64d",
        "tostring * 1000000",
        "(" * 300 + "." + ")" * 300,
        "[" * 3000,
        "(",
        "...",
        "",
        ".a ==",
        "input_filename",
        "$x",
        'getpath(["a","b"])',
        "ltrimstr(1)",
        'splits("a")',
        "1e1000",
        "-1e1000 | floor",
        "[.] | implode",
        "tojson | fromjson",
        "limit(-1; 1)",
        "\x00",
        "\u2028",
        "@sh",
        "halt_error",
        "halt",
        'import "a" as a; .',
        'include "x"; .',
        "$__prog_args",
        "getpath([1e300])",
        "[paths]",
        "ascii",
        'splits("(a+)+$")',
        'test("(a*)*b")',
    ]
)


@st.composite
def jq_filters(draw, depth: int = 0) -> str:
    if depth > 3 or draw(st.integers(0, 3)) == 0:
        return draw(jq_atoms)
    left = draw(jq_filters(depth + 1))
    right = draw(jq_filters(depth + 1))
    form = draw(
        st.sampled_from(
            ["{l} == {r}", "{l} and {r}", "{l} | {r}", "select({l})", "({l})", "{l} // {r}",
             "[{l}]", "{l} > {r}", "has(\"a\")", "{l}, {r}", "if {l} then {r} else . end",
             "{l} | not", "any({l})", "{l} + {r}", "test(\"a\")", "reduce .[]? as $x (0; . + 1)"]
        )
    )  # fmt: skip
    return form.format(l=left, r=right)


filters = st.integers(0, 999).flatmap(
    lambda n: (
        jq_runaway if 617 <= n < 617 + RUNAWAY_PER_MILLE else jq_nasty if n < 300 else jq_filters()
    )
)

# -- query strings -------------------------------------------------------------------

QUERY_KEYS = [
    "id", "queue", "type", "status", "priority", "ready_at", "attempts", "filter", "filter",
    "order", "limit", "from", "before", "prefetch", "x", "", "é", "status[]",
]  # fmt: skip
numbers = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(
        [
            "--5",
            "-0",
            "+3",
            "1e9",
            "0x10",
            "1_000",
            "١٢",
            " 5",
            "5 ",
            "nan",
            "inf",
            "",
            "..",
            "1..",
            "..1",
            "5..1",
            "1..2..3",
            "-5..-1",
            "1. .2",
            "9" * 5000,
            "-" + "9" * 5000,
            "4294967296",
            "18446744073709551616",
            "9" * 20 + "..1",
        ]
    ),  # fmt: skip
)
query_values = st.one_of(
    numbers,
    names,
    st.sampled_from(list(STATUSES) + ["ready,in_flight", "bogus", "READY", ",", "ready,"]),
    st.sampled_from(["asc", "desc", "ASC", "%C3%A9", "é", "0" * 25, "z" * 25, "03hbd4fwjntmejc628k1fdybj"]),
    filters,
)  # fmt: skip


RAW_SAFE = string.punctuation.replace("&", "").replace("#", "")


VALUES_BY_KEY = {
    "filter": filters,
    "priority": numbers,
    "ready_at": numbers,
    "attempts": numbers,
    "limit": numbers,
    "prefetch": numbers,
    "status": st.sampled_from(
        list(STATUSES) + ["ready,in_flight", "bogus", "READY", ",", "ready,"]
    ),
    "order": st.sampled_from(["asc", "desc", "ASC", "", "random"]),
}


@st.composite
def query_strings(draw) -> str:
    keys = draw(st.lists(st.sampled_from(QUERY_KEYS), max_size=5))
    parts = []
    for key in keys:
        if draw(st.integers(0, 4)) == 0:
            value = draw(query_values)  # any value for any key
        else:
            value = draw(VALUES_BY_KEY.get(key, query_values))
        if draw(st.integers(0, 9)) == 0:  # punctuation unencoded: broken percent-escapes
            parts.append(f"{quote(key, safe=RAW_SAFE)}={quote(value, safe=RAW_SAFE)}")
        else:
            parts.append(f"{quote(key, safe='')}={quote(value, safe='')}")
    raw = "&".join(parts)
    if draw(st.integers(0, 19)) == 0:
        raw += draw(st.sampled_from(["&", "&&", "=", "%", "%ZZ", "%C3", "a=%00", "==="]))
    return raw


# -- bodies on the wire ----------------------------------------------------------------

CONTENT_TYPES = [
    "application/json",
    "application/msgpack",
    "application/x-msgpack",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/json; charset=latin-1",
    "application/xml",
    "multipart/form-data; boundary=x",
    "",
    None,
]


def _msgpack_oddities(draw) -> bytes:
    return draw(
        st.sampled_from(
            [
                msgpack.packb({b"queue": "q", "type": "t", "payload": {}}),
                msgpack.packb({"queue": "q", "type": "t", "payload": {b"bin": 1}}),
                msgpack.packb(
                    {"queue": "q", "type": "t", "payload": {msgpack.ExtType(1, b"x"): 1}}
                ),
                msgpack.packb({"queue": "q", "type": "t", "payload": msgpack.ExtType(5, b"")}),
                msgpack.packb({"queue": "q", "type": "t", "payload": {1: 2, None: 3}}),
                msgpack.packb({"queue": "q", "type": "t", "payload": b"\x00\xff"}),
                msgpack.packb({"queue": "q", "type": "t", "payload": 2**64 - 1}),
                msgpack.packb({"queue": "q", "type": "t", "payload": float("nan")}),
                msgpack.packb({"queue": "q", "type": "t", "payload": float("inf")}),
                msgpack.packb({"jobs": [{"queue": "q", "type": "t", "payload": {(1, 2): 3}}]}),
                b"\xc1",  # never-used msgpack byte
                b"\x91",  # truncated array
                b"\xdf\xff\xff\xff\xff",  # map claiming 4 billion entries
            ]
        )
    )


@st.composite
def wire_bodies(draw, value_strategy) -> tuple[bytes, str | None]:
    """(bytes, content type) for a value, or garbage under some content type."""
    kind = draw(st.sampled_from(["json", "json", "msgpack", "msgpack", "odd", "garbage", "nan"]))
    if kind == "json":
        value = draw(value_strategy)
        try:
            data = orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):  # deeper than orjson writes
            try:
                data = json.dumps(value).encode()
            except RecursionError:
                data = b"[" * 2000 + b"]" * 2000
        return data, draw(st.sampled_from(CONTENT_TYPES[:1] + CONTENT_TYPES[3:5] + [None]))
    if kind == "msgpack":
        value = draw(value_strategy)
        try:
            data = msgpack.packb(value)
        except (ValueError, OverflowError, RecursionError):  # msgpack's own nesting limit
            data = b"\x91" * 2000 + b"\xc0"
        return data, draw(st.sampled_from(CONTENT_TYPES[1:3]))
    if kind == "odd":
        return _msgpack_oddities(draw), draw(st.sampled_from(CONTENT_TYPES[1:3]))
    if kind == "nan":
        raw = draw(st.sampled_from([b'{"queue":"q","type":"t","payload":NaN}',
                                    b'{"queue":"q","type":"t","payload":1e999}',
                                    b'{"jobs":[{"queue":"q","type":"t","payload":-Infinity}]}',
                                    b'{"ids":["a"], "ids":[1]}', b'\xef\xbb\xbf{}', b'[]', b'null',
                                    b'"x"', b'{"queue":"\\ud800","type":"t","payload":1}']))  # fmt: skip
        return raw, draw(st.sampled_from(CONTENT_TYPES))
    return draw(st.binary(max_size=64)), draw(st.sampled_from(CONTENT_TYPES))


# -- the client and its checks ---------------------------------------------------------


class Failure(AssertionError):
    pass


class Fuzzer:
    """Sends requests, checks each answer, and keeps a little real state."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
        self.known_ids: list[str] = []
        self.stream = TakeStream(base_url, prefetch=5)
        self.held: list[str] = []  # ids delivered on our stream, not yet acked
        self.requests = 0
        self.examples = 0
        self.skipped = 0
        self.wedged: str | None = None
        self.slow: list[tuple[float, str]] = []  # answers over 0.5 s, for the cost report
        self.slow_requests: set[tuple] = set()  # not sent twice: CI time goes to new inputs
        self.recent: list[str] = []  # the last requests, for failures no single request shows
        self.statuses: dict[int, int] = {}
        self.worst = 0.0
        self.rng = random.Random(FUZZ_SEED)

    def close(self) -> None:
        self.stream.close()
        self.client.close()

    def fail(self, message: str, context: bool = False) -> None:
        if context:
            message += "\n  after these requests:\n    " + "\n    ".join(self.recent)
        if KEEP_GOING:
            with open(KEEP_GOING, "a") as out:
                out.write(json.dumps({"failure": message}) + "\n")
            return
        raise Failure(message)

    def send(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        content_type: str | None = None,
        accept: str | None = None,
    ) -> httpx.Response | None:
        headers = {}
        if content_type is not None:
            headers["content-type"] = content_type
        if accept is not None:
            headers["accept"] = accept
        if self.wedged:
            raise Failure(f"server wedged earlier by: {self.wedged}")
        key = (method, path, content)
        if key in self.slow_requests:  # answered (slowly) once already: same again
            self.skipped += 1
            return None
        started = time.monotonic()
        shown_path = path if len(path) <= 300 else f"{path[:300]}...({len(path)} chars)"
        shown_body = content if content is None or len(content) <= 300 else content[:300]
        described = (
            f"{method} {shown_path} content-type={content_type!r} accept={accept!r} "
            f"body={shown_body!r}"
        )
        try:
            response = self._request(method, path, content, headers, started)
        except httpx.InvalidURL:  # httpx will not send it (over 64 KiB): nothing to test
            self.skipped += 1
            return None
        except httpx.TimeoutException:
            # The server is wedged (or as good as): every later request would wait
            # as long, so stop here whatever the mode.
            self.wedged = f"no answer within {REQUEST_TIMEOUT_S} s: {described}"
            if KEEP_GOING:
                self.fail(self.wedged, context=True)
            raise Failure(self.wedged) from None
        except httpx.HTTPError as exc:
            self.fail(f"connection error {exc!r}: {described}")
            self.client.close()
            self.client = httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S)
            return None
        elapsed = time.monotonic() - started
        self.recent = [*self.recent[-7:], f"{described} -> {response.status_code}"]
        self.requests += 1
        self.worst = max(self.worst, elapsed)
        if elapsed > 0.5:
            self.slow.append((round(elapsed, 2), described[:160]))
            self.slow_requests.add(key)
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        self.check(response, described)
        return response

    def _request(
        self, method: str, path: str, content: bytes | None, headers: dict, started: float
    ) -> httpx.Response:
        """The response, read whole within REQUEST_TIMEOUT_S in total.

        The read timeout alone is not enough: a take stream (GET /jobs/take,
        which a random id such as "take" also reaches) never ends and sends
        heartbeats. A stream that opens with 200 is closed at once.
        """
        request = self.client.build_request(method, path, content=content, headers=headers)
        response = self.client.send(request, stream=True)
        try:
            media = response.headers.get("content-type", "")
            if response.status_code == 200 and ("ndjson" in media or "stream" in media):
                response._content = b""
                return response
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if time.monotonic() - started > REQUEST_TIMEOUT_S:
                    raise httpx.ReadTimeout("the body did not end in time", request=request)
            response._content = bytes(body)
            return response
        finally:
            response.close()

    def check(self, response: httpx.Response, described: str) -> None:
        status = response.status_code
        shown = f"-> {status} {response.content[:300]!r} :: {described}"
        if status >= 500:
            self.fail(f"5xx {shown}")
            return
        if status < 400:
            return
        try:
            if "msgpack" in response.headers.get("content-type", ""):
                body = msgpack.unpackb(response.content, strict_map_key=False)
            else:
                body = orjson.loads(response.content)
        except Exception:
            self.fail(f"error body does not decode {shown}")
            return
        if status == 422 and isinstance(body, dict) and set(body) == {"not_found"}:
            if not isinstance(body["not_found"], list):
                self.fail(f"not_found is not a list {shown}")
            return
        # Extra keys are allowed (406 and 415 add "supported"); "error" must be a string.
        if not (isinstance(body, dict) and isinstance(body.get("error"), str)):
            self.fail(f"error body has no 'error' string {shown}")

    # -- real state ------------------------------------------------------------------

    def enqueue_real(self, n: int) -> None:
        jobs = [
            {"queue": self.rng.choice("ab"), "type": "t", "payload": {"a": i, "b": [i]}}
            for i in range(n)
        ]
        response = self.send("POST", "/jobs/bulk", orjson.dumps({"jobs": jobs}), "application/json")
        if response is not None and response.status_code in (200, 201):
            self.known_ids.extend(job["id"] for job in response.json()["jobs"])

    def collect_taken(self) -> None:
        while True:
            try:
                item = self.stream.next_item(timeout=0.001)
            except TimeoutError:
                return
            if item is None:
                self.fail("our take stream ended", context=True)
                self.stream = TakeStream(self.base_url, prefetch=5)
                self.held.clear()
                return
            if item is not TakeStream.HEARTBEAT:
                self.held.append(item["id"])

    def ack_or_fail_held(self, how: int) -> None:
        self.collect_taken()
        if not self.held:
            return
        job_id = self.held.pop(0)
        if how == 0:
            self.send("POST", f"/jobs/{job_id}/success")
        elif how == 1:
            self.send("POST", "/jobs/success", orjson.dumps({"ids": [job_id]}), "application/json")
        else:
            body = {"message": "fuzz", "retry_at": 0}
            self.send("POST", f"/jobs/{job_id}/failure", orjson.dumps(body), "application/json")

    def health(self) -> None:
        response = self.send("GET", "/health")
        if response is not None and response.status_code != 200:
            self.fail(f"/health answered {response.status_code}", context=True)

    def settled_counters_match_scan(self) -> None:
        """Counters == scan, compared only between two equal scans (dispatch and the
        scheduler may move jobs while a scan walks the pages)."""
        for _ in range(10):
            try:
                first = scan_counts(self.base_url)
                counted = counter_counts(self.base_url)
                second = scan_counts(self.base_url)
            except Exception as exc:  # a page that does not answer 200 (poison job...)
                self.fail(f"counter/scan check could not read the store: {exc!r}", context=True)
                return
            if first == second:
                if counted != first or any(n < 0 for n in counted.values()):
                    self.fail(f"counters {counted} != scan {first}", context=True)
                return
            time.sleep(0.2)
        self.fail("the store never settled for a counter check")


# -- operations ------------------------------------------------------------------------

segments = st.one_of(
    st.sampled_from(["", ".", "..", "%2e%2e", "%C3%A9", "%ZZ", "%00", "a" * 5000, "0" * 25,
                     "03hbd4fwjntmejc628k1fdybj", "count", "bulk", "take", "success"]),
    st.text(alphabet=string.ascii_lowercase + string.digits, min_size=25, max_size=25),
    st.text(max_size=10).map(lambda s: quote(s, safe="")),
)  # fmt: skip
accepts = st.one_of(
    st.none(),
    st.sampled_from(
        ["application/json", "application/msgpack", "*/*", "text/html", "application/*;q=0",
         "application/msgpack;q=0.5, application/json;q=0.9", "garbage"]
    ),
)  # fmt: skip


@st.composite
def job_ids(draw) -> str:
    """A placeholder for a known id ("@known"), or a random path segment."""
    if draw(st.booleans()):
        return "@known"
    return draw(segments)


def write_ops():
    return st.one_of(
        st.tuples(st.just("POST"), st.just("/jobs"), wire_bodies(job_bodies), accepts),
        st.tuples(
            st.just("POST"),
            st.just("/jobs/bulk"),
            wire_bodies(
                st.one_of(
                    st.fixed_dictionaries({"jobs": st.lists(job_bodies, max_size=4)}),
                    st.fixed_dictionaries({"jobs": json_values}),
                    json_values,
                )
            ),
            accepts,
        ),
        st.tuples(st.just("POST"), job_ids().map(lambda i: f"/jobs/{i}/success"),
                  wire_bodies(json_values), accepts),
        st.tuples(
            st.just("POST"),
            st.just("/jobs/success"),
            wire_bodies(
                st.one_of(
                    st.fixed_dictionaries({"ids": st.lists(st.one_of(st.just("@known"), st.text(max_size=26)), max_size=4)}),
                    st.fixed_dictionaries({"ids": json_values}),
                    json_values,
                )
            ),
            accepts,
        ),
        st.tuples(st.just("POST"), job_ids().map(lambda i: f"/jobs/{i}/failure"),
                  wire_bodies(failure_bodies), accepts),
        st.tuples(st.just("PATCH"), job_ids().map(lambda i: f"/jobs/{i}"),
                  wire_bodies(patch_bodies), accepts),
        st.tuples(st.just("PATCH"), query_strings().map(lambda q: f"/jobs?{q}"),
                  wire_bodies(patch_bodies), accepts),
        st.tuples(st.just("DELETE"), job_ids().map(lambda i: f"/jobs/{i}"), st.none(), accepts),
        st.tuples(st.just("DELETE"), query_strings().map(lambda q: f"/jobs?{q}"), st.none(), accepts),
    )  # fmt: skip


def read_ops():
    return st.one_of(
        st.tuples(
            st.just("GET"),
            st.tuples(st.sampled_from(["/jobs/count?", "/jobs?limit=5&"]), filters).map(
                lambda p: f"{p[0]}filter={quote(p[1], safe='')}"
            ),
            st.none(),
            accepts,
        ),
        st.tuples(st.just("GET"), query_strings().map(lambda q: f"/jobs?{q}"), st.none(), accepts),
        st.tuples(st.just("GET"), query_strings().map(lambda q: f"/jobs/count?{q}"), st.none(), accepts),
        st.tuples(st.just("GET"), job_ids().map(lambda i: f"/jobs/{i}"), st.none(), accepts),
        st.tuples(
            st.just("GET"),
            st.tuples(job_ids(), query_strings()).map(lambda p: f"/jobs/{p[0]}/errors?{p[1]}"),
            st.none(),
            accepts,
        ),
        st.tuples(
            st.just("GET"),
            st.tuples(job_ids(), st.one_of(numbers, segments)).map(
                lambda p: f"/jobs/{p[0]}/errors/{quote(p[1], safe='')}"
            ),
            st.none(),
            accepts,
        ),
        st.tuples(st.just("GET"), st.sampled_from(["/queues", "/version", "/health", "/jobs/take?prefetch=-1"]),
                  st.none(), accepts),
        st.tuples(
            st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            st.lists(segments, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)),
            st.one_of(st.none(), wire_bodies(json_values)),
            accepts,
        ),
    )  # fmt: skip


state_ops = st.one_of(
    st.tuples(st.just("@enqueue"), st.integers(1, 5)),
    st.tuples(st.just("@ack"), st.integers(0, 2)),
    st.tuples(st.just("@reset"), st.just(0)),
)


def run_op(fuzzer: Fuzzer, op: tuple, rng_pick) -> None:
    if op[0] == "@enqueue":
        fuzzer.enqueue_real(op[1])
        return
    if op[0] == "@ack":
        fuzzer.ack_or_fail_held(op[1])
        return
    if op[0] == "@reset":
        fuzzer.send("POST", "/reset")
        return
    method, path, body, accept = op
    if "@known" in path:
        path = path.replace("@known", rng_pick())
    content = content_type = None
    if body is not None:
        content, content_type = body
        if b"@known" in content:
            content = content.replace(b"@known", rng_pick().encode())
    fuzzer.send(method, path, content, content_type, accept)


@pytest.fixture
def fuzzer(start_server):
    server = start_server()
    fuzzer = Fuzzer(server.url)
    fuzzer.enqueue_real(20)
    yield fuzzer
    try:
        if fuzzer.wedged:
            return
        fuzzer.stream.close()  # no consumer: nothing moves while we compare
        fuzzer.health()
        fuzzer.settled_counters_match_scan()
        print(
            f"fuzz: {fuzzer.examples} examples, {fuzzer.requests} requests "
            f"({fuzzer.skipped} skipped), "
            f"statuses {dict(sorted(fuzzer.statuses.items()))}, "
            f"worst answer {fuzzer.worst * 1000:.0f} ms, {len(fuzzer.slow)} over 0.5 s "
            f"({sum(t for t, _ in fuzzer.slow):.1f} s in all); "
            f"server output lines with Traceback: "
            f"{sum('Traceback' in line for line in server.lines)}"
        )
    finally:
        fuzzer.client.close()
        for elapsed, described in sorted(fuzzer.slow, reverse=True)[:8]:
            print(f"  slow {elapsed} s: {described}")
        trouble = [line for line in server.lines if "ERROR" in line or "Traceback" in line]
        if trouble:
            print("server errors:\n  " + "\n  ".join(trouble[:20]))


@pytest.fixture
def licensed_fuzzer(start_server):
    """The same fuzzer against a pro server: unique and batch fields really take effect."""
    from tests.licensing import mint  # signs with the development issuer

    server = start_server("--license-key", mint())
    fuzzer = Fuzzer(server.url)
    fuzzer.enqueue_real(20)
    yield fuzzer
    try:
        if fuzzer.wedged:
            return
        fuzzer.stream.close()
        fuzzer.health()
        fuzzer.settled_counters_match_scan()
        print(
            f"fuzz[licensed]: {fuzzer.examples} examples, {fuzzer.requests} requests, "
            f"statuses {dict(sorted(fuzzer.statuses.items()))}, "
            f"worst answer {fuzzer.worst * 1000:.0f} ms"
        )
    finally:
        fuzzer.client.close()
        trouble = [line for line in server.lines if "ERROR" in line or "Traceback" in line]
        if trouble:
            print("server errors:\n  " + "\n  ".join(trouble[:20]))


def _example(fuzzer: Fuzzer, ops: list, picks: list[int]) -> None:
    known = fuzzer.known_ids
    counter = iter(picks * 4)

    def pick() -> str:
        if not known:
            return "0" * 25
        return known[next(counter, 0) % len(known)]

    for op in ops:
        run_op(fuzzer, op, pick)
    fuzzer.health()
    fuzzer.examples += 1
    if fuzzer.examples % CHECK_EVERY == 0:
        fuzzer.settled_counters_match_scan()


picks = st.lists(st.integers(0, 10_000), min_size=1, max_size=4)


@pytest.mark.timeout(600)
def test_fuzz_write_endpoints(fuzzer):
    @seed(FUZZ_SEED)
    @fuzz_settings("writes")
    @given(
        ops=st.lists(st.one_of(write_ops(), write_ops(), state_ops), min_size=1, max_size=4),
        picks=picks,
    )
    def run(ops, picks):
        _example(fuzzer, ops, picks)

    run()


@pytest.mark.timeout(600)
def test_fuzz_query_endpoints(fuzzer):
    # Runaway filters are rare among generated inputs; a few always run (each up
    # to the jq time limit) and the server must stay responsive around them.
    runaway = [
        ("GET", f"/jobs/count?filter={quote(expr, safe='')}", None, None)
        for expr in ("def f: f; f", "[range(1e8)]", "[limit(1500000; range(1e9))]")
    ]

    @example(ops=runaway, picks=[0])
    @seed(FUZZ_SEED)
    @fuzz_settings("queries")
    @given(
        ops=st.lists(st.one_of(read_ops(), read_ops(), state_ops), min_size=1, max_size=4),
        picks=picks,
    )
    def run(ops, picks):
        _example(fuzzer, ops, picks)

    run()


@pytest.mark.timeout(600)
def test_fuzz_everything_interleaved(fuzzer):
    @seed(FUZZ_SEED)
    @fuzz_settings("mixed")
    @given(
        ops=st.lists(st.one_of(write_ops(), read_ops(), state_ops), min_size=1, max_size=6),
        picks=picks,
    )
    def run(ops, picks):
        _example(fuzzer, ops, picks)

    run()


def keyed_ops():
    """Enqueues (single and bulk) whose unique and batch fields are mostly well formed."""
    keyed = st.fixed_dictionaries(
        {"queue": st.sampled_from(["a", "b"]), "type": st.just("t"), "payload": json_values},
        optional={k: JOB_FIELDS[k] for k in ("unique_key", "unique_while", "batch", "ready_at")},
    )
    return st.one_of(
        st.tuples(st.just("POST"), st.just("/jobs"), wire_bodies(keyed), accepts),
        st.tuples(
            st.just("POST"),
            st.just("/jobs/bulk"),
            wire_bodies(st.fixed_dictionaries({"jobs": st.lists(keyed, max_size=5)})),
            accepts,
        ),
    )


@pytest.mark.timeout(600)
def test_fuzz_pro_features_on_a_licensed_server(licensed_fuzzer):
    @seed(FUZZ_SEED)
    @fuzz_settings("licensed")
    @given(
        ops=st.lists(
            st.one_of(keyed_ops(), keyed_ops(), write_ops(), state_ops), min_size=1, max_size=5
        ),
        picks=picks,
    )
    def run(ops, picks):
        _example(licensed_fuzzer, ops, picks)

    run()
