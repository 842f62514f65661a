"""A listing page carries at most 16 MiB of payloads; `next` links to the rest.

Without a budget, a page of 2,000 jobs with 4 MiB payloads would build an 8 GB
response in memory.
"""

from __future__ import annotations

from tests.e2e.zizq_process import Api

MIB = 1024 * 1024


def test_big_payloads_shorten_the_page_and_paging_still_sees_every_job(server):
    with Api(server.url, fmt="msgpack", timeout=60) as api:
        ids = [api.enqueue("big", "t", {"blob": str(n) * (3 * MIB)})["id"] for n in range(10)]
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
                assert len(page["jobs"]) == 5  # 5 x 3 MiB fit in 16 MiB, a 6th would not
                assert all(len(job["payload"]["blob"]) == 3 * MIB for job in page["jobs"])
            path = page["pages"]["next"]
            pages += 1
        assert seen == [*ids, small]
        assert pages == 2
        # Paging back keeps the jobs nearest the cursor; `prev` leads to the rest.
        status, page, _ = api.get(f"/jobs?queue=big&limit=50&before={small}")
        assert status == 200 and [job["id"] for job in page["jobs"]] == ids[5:]
        status, page, _ = api.get(page["pages"]["prev"])
        assert status == 200 and [job["id"] for job in page["jobs"]] == ids[:5]
        assert page["pages"]["prev"] is None
