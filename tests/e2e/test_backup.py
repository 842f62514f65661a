"""`zizq backup`, `zizq restore` and `zizq compact`, run as real commands against real servers."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import socket
import subprocess
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.e2e.zizq_process import Api, TakeStream, ZizqServer, zizq_command

CLI_TIMEOUT_S = 120
STATUSES = ("scheduled", "ready", "in_flight", "completed", "dead")


def zizq(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run one CLI command to completion; stdout and stderr are kept apart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIZQ_") or k == "ZIZQ_BINARY"}
    kwargs.setdefault("text", True)
    return subprocess.run(
        [*zizq_command(), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=CLI_TIMEOUT_S,
        env=env,
        **kwargs,
    )


def error_lines(result) -> list[str]:
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    return [line for line in err.splitlines() if line.startswith("Error:")]


def assert_one_error(result, *needles: str) -> None:
    assert result.returncode != 0, (result.stdout, result.stderr)
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def read_manifest(archive: Path | bytes) -> dict:
    """The manifest of a backup, checking that it is the archive's last member."""
    data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        assert members[-1].name == "manifest.json"
        return json.loads(tar.extractfile(members[-1]).read())


def bulk_enqueue(api: Api, queue: str, count: int, payload=None, per_request: int = 1000) -> None:
    body = {"jobs": [{"queue": queue, "type": "t", "payload": payload or {}}] * per_request}
    raw = api.encode(body)
    for _ in range(count // per_request):
        status, reply, _ = api.request("POST", "/jobs/bulk", raw=raw)
        assert status == 201, (status, reply)


def list_all_ids(api: Api) -> list[str]:
    ids, link = [], "/jobs?limit=2000"
    while link is not None:
        status, body, _ = api.get(link)
        assert status == 200, (status, body)
        ids.extend(job["id"] for job in body["jobs"])
        link = body["pages"]["next"]
    return ids


def count(api: Api, query: str = "") -> int:
    status, body, _ = api.get("/jobs/count" + (f"?{query}" if query else ""))
    assert status == 200, (status, body)
    return body["count"]


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def checkpoints(root: Path) -> list[Path]:
    return list(root.glob(".zizq-backup-*"))


# -- backup under load, restore, serve the restored copy ---------------------------------------


def test_backup_under_load_restores_a_consistent_snapshot(start_server, tmp_path):
    server = start_server()
    api = Api(server.url)
    # Some jobs in every status that survives: scheduled, dead, ready; in flight below.
    bulk_enqueue(api, "load", 2000, {"kind": "bulk", "pad": "p" * 200})
    for n in range(20):
        api.enqueue(
            "later", "t", {"kind": "later", "n": n}, ready_at=int(time.time() * 1000) + 3600_000
        )
    with TakeStream(server.url, queues="doomed", prefetch=10) as doomed_stream:
        for n in range(10):
            api.enqueue("doomed", "t", {"kind": "doomed", "n": n})
        for job in doomed_stream.jobs(10):
            status, body, _ = api.post(
                f"/jobs/{job['id']}/failure", {"message": "no", "kill": True}
            )
            assert status == 200 and body["status"] == "dead", body

    stop = threading.Event()
    errors: list[BaseException] = []
    enqueued = Counter()
    acked = Counter()

    def enqueuer(index: int) -> None:
        try:
            with Api(server.url) as client:
                n = 0
                while not stop.is_set():
                    client.enqueue("load", "t", {"kind": "single", "thread": index, "n": n})
                    n += 1
                    enqueued[index] += 1
        except BaseException as exc:
            errors.append(exc)

    def worker(index: int) -> None:
        try:
            with (
                Api(server.url) as client,
                TakeStream(server.url, queues="load", prefetch=20) as stream,
            ):
                while not stop.is_set():
                    try:
                        job = stream.next_job(0.5)
                    except TimeoutError:
                        continue
                    assert client.ack(job["id"]) == 204
                    acked[index] += 1
        except BaseException as exc:
            errors.append(exc)

    # A worker that takes and never acks: its jobs are in flight in the snapshot.
    holder = TakeStream(server.url, queues="held", prefetch=7)
    for n in range(7):
        api.enqueue("held", "t", {"kind": "held", "n": n})
    assert len(holder.jobs(7)) == 7

    threads = [threading.Thread(target=enqueuer, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        archive = tmp_path / "backups" / "under-load.tar.gz"
        archive.parent.mkdir()
        started = time.monotonic()
        result = zizq("backup", "--url", server.admin_url, str(archive))
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # the load goes on after the snapshot point
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    holder.close()
    assert not errors, errors
    assert sum(enqueued.values()) > 100 and sum(acked.values()) > 100, (enqueued, acked)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"Requesting backup from {server.admin_url}..."
    size_line = result.stdout.splitlines()[-1]
    assert re.fullmatch(
        rf"Backup saved to {re.escape(str(archive))} \(\d+(\.\d)? (B|KiB|MiB)\)", size_line
    )
    assert leftovers(archive.parent) == [archive.name]
    assert elapsed < 30

    manifest = read_manifest(archive)
    jobs = manifest["jobs"]
    assert manifest["format"] == "zizq-backup" and manifest["schema_version"] >= 1
    assert jobs["total"] == sum(jobs[s] for s in STATUSES)
    assert jobs["scheduled"] == 20 and jobs["dead"] == 10
    assert jobs["in_flight"] >= 7  # the holder's jobs, plus whatever the workers had
    # The live server moved on after the snapshot.
    assert count(api) != jobs["total"] or sum(enqueued.values()) == 0

    restored_root = tmp_path / "restored"
    result = zizq("restore", "--root-dir", str(restored_root), str(archive))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Restoring from {archive} to {restored_root}..."
    assert "Restore complete." in lines
    assert f"{jobs['total']:,} jobs" in result.stdout
    api.close()

    restored = start_server(root_dir=restored_root)
    with Api(restored.url) as rapi:
        assert count(rapi) == jobs["total"]
        assert count(rapi, "status=in_flight") == 0
        assert count(rapi, "status=ready") == jobs["ready"] + jobs["in_flight"]
        for status in ("scheduled", "completed", "dead"):
            assert count(rapi, f"status={status}") == jobs[status], status
        ids = list_all_ids(rapi)
        assert len(ids) == len(set(ids)) == jobs["total"]
        kinds = Counter()
        with httpx.Client(base_url=restored.url, http2=True, http1=False, timeout=15) as h2:
            for job_id in ids:
                response = h2.get(f"/jobs/{job_id}")
                assert response.status_code == 200, (job_id, response.text)
                job = response.json()
                assert job["id"] == job_id and job["type"] == "t"
                assert isinstance(job.get("payload"), dict) and "kind" in job["payload"], job
                kinds[job["payload"]["kind"]] += 1
        assert kinds["later"] == 20 and kinds["doomed"] == 10 and kinds["held"] == 7


# -- interrupted downloads ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_backup_with_nothing_listening_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = zizq("backup", "--url", f"http://127.0.0.1:{free_port()}", str(out / "b.tar.gz"))
    assert_one_error(result, "connection refused")
    assert leftovers(out) == []
    result = zizq("compact", "--url", f"http://127.0.0.1:{free_port()}")
    assert_one_error(result, "connection refused")


def load_incompressible(server: ZizqServer, megabytes: int) -> None:
    """About `megabytes` MB of random payloads: an archive that takes a while to stream."""
    with Api(server.url) as api:
        for _ in range(megabytes):
            jobs = [
                {
                    "queue": "big",
                    "type": "t",
                    "payload": {"r": base64.b64encode(os.urandom(750)).decode()},
                }
                for _ in range(1000)
            ]
            status, body, _ = api.post("/jobs/bulk", {"jobs": jobs})
            assert status == 201, (status, body)


def test_interrupted_backups_leave_nothing(start_server, tmp_path):
    server = start_server()
    load_incompressible(server, 60)

    # A client that reads a few KB and hangs up: the server drops its checkpoint.
    host, port = urlsplit(server.admin_url).hostname, urlsplit(server.admin_url).port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /backup HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n")
        received = b""
        while len(received) < 8192:
            chunk = sock.recv(4096)
            assert chunk, received[:300]
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert len(checkpoints(server.root_dir)) == 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    deadline = time.monotonic() + 5
    while checkpoints(server.root_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoints(server.root_dir) == []

    # The server dies (kill -9) while `zizq backup` downloads.
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [*zizq_command(), "backup", "--url", server.admin_url, str(out / "b.tar.gz")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = [p for p in out.iterdir() if p.name.endswith(".part")]
        if parts and parts[0].stat().st_size > 256 * 1024:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    else:
        raise AssertionError("the download never started")
    server.kill()
    stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT_S)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert_one_error(result)
    assert "broke off" in error_lines(result)[0] or "incomplete" in error_lines(result)[0]
    assert "Backup saved" not in stdout
    assert leftovers(out) == []


# -- backup to stdout, and what restore refuses ---------------------------------------------------


def rebuild(archive: bytes, change) -> bytes:
    """Re-write a backup's tar.gz, letting change(name, data) -> data alter members."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as source,
        gzip.GzipFile(fileobj=out, mode="wb") as packed,
        tarfile.open(fileobj=packed, mode="w|") as target,
    ):
        for member in source:
            data = source.extractfile(member).read()
            data = change(member.name, data)
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return out.getvalue()


def build_archive(members: list[tuple[tarfile.TarInfo, bytes]], schema_version: int) -> bytes:
    import hashlib

    files = [
        {"name": info.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for info, data in members
        if info.isreg()
    ]
    manifest = json.dumps(
        {
            "format": "zizq-backup",
            "zizq_version": "0.0.0",
            "schema_version": schema_version,
            "created_at": 0,
            "jobs": {"total": 0},
            "files": files,
        }
    ).encode()
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb") as packed,
        tarfile.open(fileobj=packed, mode="w|") as tar,
    ):
        for info, data in [*members, (tarfile.TarInfo("manifest.json"), manifest)]:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out.getvalue()


def test_backup_to_stdout_and_restore_refusals(server, tmp_path):
    with Api(server.url) as api:
        bulk_enqueue(api, "q", 3000, {"pad": "z" * 100})
    result = zizq("backup", "--url", server.admin_url, "-", text=False)
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert err.splitlines()[0] == f"Requesting backup from {server.admin_url}..."
    assert "Backup written to stdout (" in err
    archive = result.stdout
    manifest = read_manifest(archive)
    assert manifest["jobs"]["total"] == 3000 and manifest["jobs"]["ready"] == 3000
    good = tmp_path / "good.tar.gz"
    good.write_bytes(archive)
    schema = manifest["schema_version"]
    sample = next(entry for entry in manifest["files"] if entry["name"].endswith(".sst"))

    area = tmp_path / "area"
    area.mkdir()

    def refused(name: str, data: bytes, *needles: str) -> None:
        path = tmp_path / f"{name}.tar.gz"
        path.write_bytes(data)
        target = area / name
        result = zizq("restore", "--root-dir", str(target), str(path))
        assert_one_error(result, *needles)
        assert result.returncode == 1
        assert not target.exists(), name
        assert leftovers(area) == [], name  # no staging directory left behind
        assert not list(tmp_path.rglob("evil*")), name

    # A non-empty directory is left alone.
    busy = area / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = zizq("restore", "--root-dir", str(busy), str(good))
    assert_one_error(result, "not empty")
    assert leftovers(busy) == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"
    (busy / "keep.txt").unlink()
    busy.rmdir()

    # One data byte changed inside one member; the manifest unchanged.
    def flip(name: str, data: bytes) -> bytes:
        if name != sample["name"]:
            return data
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]

    refused("tampered", rebuild(archive, flip), "does not match its manifest", sample["name"])

    # A manifest from the future.
    def future(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        body = json.loads(data)
        body["schema_version"] = 999
        return json.dumps(body).encode()

    refused("future", rebuild(archive, future), "schema version 999")

    # Path traversal, an absolute path, links.
    refused("traversal", build_archive([(tarfile.TarInfo("../evil"), b"owned")], schema), "outside")
    refused(
        "traversal-deep",
        build_archive([(tarfile.TarInfo("sub/../../evil2"), b"owned")], schema),
        "outside",
    )
    refused(
        "absolute",
        build_archive([(tarfile.TarInfo(str(tmp_path / "evil3")), b"x")], schema),
        "absolute",
    )
    link = tarfile.TarInfo("CURRENT")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    refused("symlink", build_archive([(link, b"")], schema), "link")
    hard = tarfile.TarInfo("CURRENT")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../../evil"
    refused("hardlink", build_archive([(hard, b"")], schema), "link")
    refused("garbage", b"not a backup at all", "not a readable zizq backup")
    refused("truncated", archive[: len(archive) // 2], "zizq backup")

    # And the untouched archive restores.
    result = zizq("restore", "--root-dir", str(area / "fine"), str(good))
    assert result.returncode == 0, result.stderr
    assert "Restore complete." in result.stdout and "3,000 jobs" in result.stdout


# -- compaction --------------------------------------------------------------------------------------


def disk_bytes(root: Path) -> int:
    return sum(
        p.stat().st_blocks * 512
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".zizq-backup-")
    )


SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(text: str) -> float:
    number, unit = text.split()
    return float(number) * SIZE_UNITS[unit]


def compactions(server: ZizqServer) -> int:
    return sum("compaction finished" in line for line in server.lines)


def test_compact_and_auto_compaction_after_deleting_100k_jobs(start_server):
    """`zizq compact` frees the space of deleted jobs; 100,000 bulk-deleted jobs do it alone.

    With --auto-compact-threshold 100000 (the default is 10,000) the server compacts by
    itself once 100,000 jobs were removed by bulk deletes, so the explicit command is
    shown just below that threshold (99,000 jobs), where its before and after figures are
    its own; then 100,000 more deletions trigger the automatic one.
    """
    server = start_server("--auto-compact-threshold", "100000")
    with Api(server.url) as api:
        bulk_enqueue(api, "kept", 1000, {"pad": "k" * 100})
        bulk_enqueue(api, "doomed", 99_000, {"pad": "d" * 100})
        loaded = disk_bytes(server.root_dir)
        status, body, _ = api.request("DELETE", "/jobs?queue=doomed")
        assert status == 200 and body == {"deleted": 99_000}, (status, body)
        time.sleep(0.2)
        assert compactions(server) == 0  # below the threshold
        result = zizq("compact", "--url", server.admin_url)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == f"Requesting compaction from {server.admin_url}..."
        sizes = dict(re.findall(r"^Size (before|after): +(\d+(?:\.\d)? \w+)", result.stdout, re.M))
        assert set(sizes) == {"before", "after"}, result.stdout
        assert parse_size(sizes["after"]) < parse_size(sizes["before"]) / 2, result.stdout
        assert re.search(r"^Compaction took \d+\.\d\ds$", result.stdout, re.M), result.stdout
        compacted = disk_bytes(server.root_dir)
        assert compacted < loaded / 2, (loaded, compacted, result.stdout)
        assert compactions(server) == 1

        # 100,000 jobs removed by one bulk delete: the server compacts on its own.
        bulk_enqueue(api, "doomed", 100_000, {"pad": "d" * 100})
        loaded = disk_bytes(server.root_dir)
        status, body, _ = api.request("DELETE", "/jobs?queue=doomed")
        assert status == 200 and body == {"deleted": 100_000}, (status, body)
        deadline = time.monotonic() + 20
        while compactions(server) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert compactions(server) == 2, server.output[-2000:]
        assert disk_bytes(server.root_dir) < loaded / 2
        assert count(api) == 1000
