"""A listing page carries at most 16 MiB of payloads; `next` links to the rest.

Without a budget, a page of 2,000 jobs with 2 MiB payloads would build a 4 GB
response in memory.
"""

from __future__ import annotations

from tests.e2e.zizq_process import Api

MIB = 1024 * 1024


def test_big_payloads_shorten_the_page_and_paging_still_sees_every_job(server):
    with Api(server.url, fmt="msgpack", timeout=60) as api:
        blob = 3 * MIB // 2
        ids = [api.enqueue("big", "t", {"blob": str(n % 10) * blob})["id"] for n in range(12)]
        small = api.enqueue("big", "t", {"n": 1})["id"]
        seen: list[str] = []
        path = "/jobs?queue=big&limit=50"
        pages = 0
        while path:
            status, page, response = api.get(path)
            assert status == 200, page
            assert len(response.content) < 17 * MIB
            seen.extend(job["id"] for job in page["jobs"])
            if pages == 0:
                assert len(page["jobs"]) == 10  # 10 x 1.5 MiB fit in 16 MiB, an 11th would not
                assert all(len(job["payload"]["blob"]) == blob for job in page["jobs"])
            path = page["pages"]["next"]
            pages += 1
        assert seen == [*ids, small]
        assert pages == 2
        # Paging back keeps the jobs nearest the cursor; `prev` leads to the rest.
        status, page, _ = api.get(f"/jobs?queue=big&limit=50&before={small}")
        assert status == 200 and [job["id"] for job in page["jobs"]] == ids[2:]
        status, page, _ = api.get(page["pages"]["prev"])
        assert status == 200 and [job["id"] for job in page["jobs"]] == ids[:2]
        assert page["pages"]["prev"] is None
