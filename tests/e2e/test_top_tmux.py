"""The real `zizq top` command (the frozen binary when ZIZQ_BINARY is set) in a real terminal:
tmux at 100x30, keys sent with send-keys, the screen read with capture-pane."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid

import pytest

from tests.e2e.zizq_process import Api, TakeStream, zizq_command

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
WAIT_S = 10.0


class Tmux:
    """One detached session on a private tmux server (its own socket), killed at the end."""

    def __init__(self, command: list[str], width: int = 100, height: int = 30) -> None:
        self.socket = f"zizq-top-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.run("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
                 shlex.join(command))  # fmt: skip

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top").stdout

    def alive(self) -> bool:
        return self.run("has-session", "-t", "top").returncode == 0

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline or not self.alive():
                raise AssertionError(f"{text!r} never showed; screen:\n{screen}")
            time.sleep(0.05)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "top", *keys)

    def close(self) -> None:
        self.run("kill-server")


def test_live_counts_in_a_real_terminal_and_q_exits(server):
    term = Tmux([*zizq_command(), "top", "--url", server.admin_url, "-r", "100ms"])
    try:
        first = term.wait_for("0 in-flight, 0 ready, 0 scheduled")
        assert f"Connected {server.admin_url}" in first
        assert "In-Flight   Ready   Scheduled" in first
        with Api(server.url) as api:
            jobs = [api.enqueue(queue="mail", type="send_email") for _ in range(3)]
            term.wait_for("0 in-flight, 3 ready, 0 scheduled")
            term.keys("Tab")
            term.wait_for(jobs[0]["id"])
            take = TakeStream(server.url, queues="mail")
            try:
                taken = take.next_job()
                term.wait_for("1 in-flight, 2 ready, 0 scheduled")
                term.keys("BTab")  # Shift-Tab: back to In-Flight
                term.wait_for(taken["id"])
                assert api.ack(taken["id"]) in (200, 204)
                # The worker takes the next job at once: one done, one more in flight.
                following = take.next_job()
                screen = term.wait_for("1 in-flight, 1 ready, 0 scheduled")
                screen = term.wait_for(following["id"])
                assert taken["id"] not in screen
            finally:
                take.close()
        term.keys("q")
        deadline = time.monotonic() + WAIT_S
        while term.alive():
            assert time.monotonic() < deadline, f"q did not exit; screen:\n{term.screen()}"
            time.sleep(0.05)
    finally:
        term.close()
