"""Finding 1: a filter holding only a jq expression must act on exactly its matches.

It once compared equal to "no filter", so `DELETE /jobs?filter=.a == 99` deleted
every job, in-flight ones too.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.e2e.zizq_process import Api, TakeStream

from .helpers import assert_counters_match_scan

# Each filter combination below selects exactly the jobs whose payload `n` is listed.
FILTERS = [
    ({"filter": ".a == 99"}, set()),
    ({"filter": ".n == 1"}, {1}),
    ({"filter": ".n >= 2", "queue": "q"}, {2}),
    ({"filter": ".n >= 0", "status": "ready"}, {0, 2, 3}),
    ({"filter": "true", "type": "other"}, {3}),
    ({"filter": ".n == 1", "status": "ready"}, set()),  # job 1 is in flight
    ({"filter": "false"}, set()),
    ({"filter": "null"}, set()),
    ({"filter": "empty"}, set()),
]


@pytest.mark.parametrize(("params", "expected"), FILTERS, ids=[str(f[0]) for f in FILTERS])
def test_filtered_delete_patch_count_and_list_touch_exactly_the_matches(server, params, expected):
    # Closed at the end: a server stopping waits up to 3 s for an idle HTTP/2 client.
    with Api(server.url, fmt="msgpack", http2=True) as api:
        ids = {}
        ids[1] = api.enqueue("q", "t", {"n": 1})["id"]
        with TakeStream(server.url, queues="q", prefetch=1) as stream:
            assert stream.next_job()["id"] == ids[1]  # n=1 is now in flight
            ids[0] = api.enqueue("q", "t", {"n": 0})["id"]
            ids[2] = api.enqueue("q", "t", {"n": 2})["id"]
            ids[3] = api.enqueue("other", "other", {"n": 3})["id"]
            want = {ids[n] for n in expected}

            query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
            status, body, _ = api.get(f"/jobs/count?{query}")
            assert status == 200 and body["count"] == len(want), body
            status, body, _ = api.get(f"/jobs?{query}")
            assert status == 200 and {j["id"] for j in body["jobs"]} == want, body

            status, body, _ = api.request("PATCH", f"/jobs?{query}", {"priority": 7})
            assert status == 200 and body == {"patched": len(want)}, body
            for n, job_id in ids.items():
                status, job, _ = api.get(f"/jobs/{job_id}")
                assert status == 200
                assert (job["priority"] == 7) == (job_id in want), (n, job)

            status, body, _ = api.request("DELETE", f"/jobs?{query}")
            assert status == 200 and body == {"deleted": len(want)}, body
            for job_id in ids.values():
                status, _, _ = api.get(f"/jobs/{job_id}")
                assert status == (404 if job_id in want else 200)
            status, body, _ = api.get("/jobs/count")
            assert body["count"] == 4 - len(want)
            assert_counters_match_scan(server.url)


def test_delete_without_any_filter_still_deletes_everything(server):
    api = Api(server.url)
    for n in range(3):
        api.enqueue("q", "t", {"n": n})
    status, body, _ = api.request("DELETE", "/jobs")
    assert status == 200 and body == {"deleted": 3}
    assert api.get("/jobs/count")[1]["count"] == 0
