"""The basics over every protocol combination: health, enqueue, take, ack."""

from tests.e2e.zizq_process import TakeStream


def test_health_and_version(api):
    assert api.get("/health")[:2] == (200, {"status": "ok"})
    status, body, _ = api.get("/version")
    assert status == 200 and body["version"].count(".") == 2


def test_enqueue_take_ack(api, server):
    job = api.enqueue("smoke", "greet", {"hello": "world"})
    assert job["status"] == "ready" and job["duplicate"] is False and "payload" not in job
    with TakeStream(server.url, queues="smoke", fmt=api.fmt, http2=api.http2) as stream:
        taken = stream.next_job()
        assert taken["id"] == job["id"]
        assert taken["payload"] == {"hello": "world"}
        assert taken["status"] == "in_flight" and "dequeued_at" in taken
        assert api.ack(job["id"]) == 204
    assert api.get(f"/jobs/{job['id']}")[0] == 404
