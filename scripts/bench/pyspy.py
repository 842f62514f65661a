"""py-spy for benchmarks: record a server while it is under load, and say where time went.

Only the thread holding the GIL is sampled (`--gil`): the server's Python code is what
limits it, and that code runs one thread at a time. Figures are in microseconds of sampled
time per job, so runs of different lengths and rates compare directly, and `diff` shows what a variant costs per
job on top of a baseline: the evidence behind an optimisation, not just a share.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

RATE_HZ = 200

# Frames every request runs through (process start, the loop, the ASGI wrappers): as
# inclusive figures they only say "the server was busy".
_PLUMBING = ("zizq/cli/", "zizq/__main__.py", "zizq/server.py", "zizq/api/app.py")


def record(pid: int, out: Path, max_seconds: float) -> subprocess.Popen:
    """Start sampling `pid` (without pausing it) into `out`; `stop` ends it."""
    local = Path(sys.executable).with_name("py-spy")
    command = [
        str(local if local.exists() else "py-spy"),
        "record", "--pid", str(pid), "--rate", str(RATE_HZ),
        "--duration", str(int(max_seconds) + 1),
        "--format", "raw", "--nonblocking", "--gil", "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Profile:
    jobs: int = 0  # jobs enqueued while it was recorded
    total: int = 0  # samples
    own: collections.Counter = field(default_factory=collections.Counter)  # leaf frames
    inclusive: collections.Counter = field(default_factory=collections.Counter)  # zizq frames

    def us_per_job(self, samples: int) -> float:
        return samples / RATE_HZ / max(self.jobs, 1) * 1e6


def load(path: Path, jobs: int) -> Profile | None:
    """Read py-spy's raw (collapsed) output: `frame;frame;... count` per line."""
    if not path.exists():
        return None
    profile = Profile(jobs=jobs)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(frame) for frame in stack.split(";")]
        profile.total += n
        profile.own[frames[-1]] += n
        for frame in set(frames):
            if frame.partition(" (")[2].startswith("zizq/") and not any(
                p in frame for p in _PLUMBING
            ):
                profile.inclusive[frame] += n
    return profile


def short(frame: str) -> str:
    """`func (/abs/.../zizq/queue/keyed.py:123)` -> `func (zizq/queue/keyed.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    if "/zizq/" in where:
        where = "zizq/" + where.rsplit("/zizq/", 1)[1]
    elif "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    elif "/lib/python" in where:
        where = where.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{name} ({where})" if where else name


def report(profile: Profile, top: int) -> list[str]:
    per_job = profile.us_per_job(profile.total)
    lines = [f"{profile.total} samples at {RATE_HZ} Hz, {per_job:.1f} us sampled per job"]
    lines.append("inclusive (zizq functions), us/job and share:")
    lines += _rows(profile, profile.inclusive, top)
    lines.append("self (any function), us/job and share:")
    lines += _rows(profile, profile.own, top)
    return lines


def _rows(profile: Profile, counter: collections.Counter, top: int) -> list[str]:
    return [
        f"  {profile.us_per_job(n):7.2f}  {100 * n / max(profile.total, 1):5.1f}%  {frame}"
        for frame, n in counter.most_common(top)
    ]


def diff(profile: Profile, base: Profile, top: int) -> list[str]:
    """What the variant spends per job beyond the baseline, by function."""
    extra = profile.us_per_job(profile.total) - base.us_per_job(base.total)
    lines = [f"versus the baseline: {extra:+.1f} us sampled per job; largest differences:"]
    for title, mine, theirs in (
        ("inclusive", profile.inclusive, base.inclusive),
        ("self", profile.own, base.own),
    ):
        deltas = {
            frame: profile.us_per_job(mine[frame]) - base.us_per_job(theirs[frame])
            for frame in set(mine) | set(theirs)
        }
        ranked = sorted(deltas.items(), key=lambda item: -abs(item[1]))[:top]
        lines.append(f"{title}:")
        lines += [f"  {delta:+7.2f}  {frame}" for frame, delta in ranked]
    return lines
