"""Every `zizq top` key in Textual's harness (`App.run_test`, pilot presses), on a real server.

One pro-licensed `zizq serve` subprocess per module holds a known queue: 40 ready jobs
(priorities 100..139, so list order is R00..R39, even ones in `emails`, odd ones in
`billing`, type `type_NN`), 3 scheduled ones due in 1, 2 and 3 hours (S0..S2) and 2 in
flight (F0, F1) held by an open take stream. Tests that change it (pause, delete) put it
back before they end.

What is checked is what Textual composited for the terminal (`Screen`): the text of every
row plus, to tell the highlighted table row and the active tab, the background of each
cell. Job ids are replaced by their labels (right-aligned, so columns stay where they are)
and times that move (uptime, ages, timestamps) are masked, so whole screens compare as
snapshots at 80x24 and at 160x40.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from rich.color import Color
from rich.segment import Segment

from tests.e2e.zizq_process import Api, TakeStream, ZizqServer
from tests.licensing import mint
from zizq.top.app import TopApp

pytestmark = pytest.mark.asyncio
NARROW = (80, 24)
WIDE = (160, 40)
WAIT_S = 8.0
TABLE_TOP = 9  # first table body row: 7 header rows, the tab bar, the column headings
HOUR_MS = 3_600_000


# -- the server -----------------------------------------------------------------------------


@dataclass
class Seeded:
    server: ZizqServer
    api: Api
    labels: dict[str, str]  # job id -> R00 / F0 / S0
    ready: list[str]  # ids in list order
    in_flight: list[str]
    scheduled: list[str]

    def label(self, job_id: str, name: str) -> None:
        self.labels[job_id] = name

    def status(self, job_id: str) -> int:
        return self.api.get(f"/jobs/{job_id}")[0]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = tmp_path_factory.mktemp("top_keys") / "root"
    server = ZizqServer(root, "--license-key", mint(tier="pro")).start()
    api = Api(server.url)
    take = None
    try:
        data = Seeded(server, api, {}, [], [], [])
        for number in range(40):
            job = api.enqueue(
                queue="emails" if number % 2 == 0 else "billing",
                type=f"type_{number:02}",
                payload={"n": number},
                priority=100 + number,
            )
            data.ready.append(job["id"])
            data.label(job["id"], f"R{number:02}")
        now_ms = int(time.time() * 1000)
        for number in range(3):
            job = api.enqueue(
                queue="later", type=f"report_{number}", ready_at=now_ms + (number + 1) * HOUR_MS
            )
            data.scheduled.append(job["id"])
            data.label(job["id"], f"S{number}")
        hot = [api.enqueue(queue="hot", type=f"busy_{number}")["id"] for number in range(2)]
        take = TakeStream(server.url, queues="hot", prefetch=2)
        taken = [job["id"] for job in take.jobs(2)]
        assert sorted(taken) == sorted(hot)
        data.in_flight = taken  # taken in list order: by dequeued_at, then id
        for number, job_id in enumerate(taken):
            data.label(job_id, f"F{number}")
        yield data
    finally:
        if take is not None:
            take.close()
        api.close()
        server.stop()


# -- the screen --------------------------------------------------------------------------------


@dataclass
class Screen:
    """What Textual composited for the terminal: one row of cells per line, with styles."""

    rows: list[list[Segment]]

    @property
    def lines(self) -> list[str]:
        return ["".join(segment.text for segment in row) for row in self.rows]

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.lines)

    def background(self, y: int, x: int = 0) -> Color | None:
        column = 0
        for segment in self.rows[y]:
            column += segment.cell_length
            if x < column:
                return segment.style.bgcolor if segment.style else None
        return None

    def highlighted(self) -> list[int]:
        """Table body rows drawn on another background than the screen's (the cursor)."""
        plain = self.background(0)
        last = len(self.rows) - 1  # the help bar
        return [y for y in range(TABLE_TOP, last) if self.background(y) != plain]

    def active_tab(self) -> str:
        """The tab drawn in the colour of the column headings below it."""
        wanted = self.background(TABLE_TOP - 1)
        names = [
            segment.text.strip()
            for segment in self.rows[TABLE_TOP - 2]
            if segment.style and segment.style.bgcolor == wanted and segment.text.strip()
        ]
        return " ".join(names)


def grab(app: TopApp) -> Screen:
    # The compositor's strips are exactly what the driver writes to the terminal: all
    # widgets cropped and layered, after Textual's own styling.
    strips = app.screen._compositor.render_strips()
    return Screen([list(strip) for strip in strips])


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:[\d:]*( [+-][\d:]*)?")
TIME_HEADINGS = ("DURATION", "DELAY", "DUE")
ID_PART = re.compile(r"\b[0-9a-z]{10,24}\b")


def id_part(text: str, data: Seeded) -> str:
    """A cropped id (its head in a narrow panel, its tail when scrolled) as `label~`."""
    found = [
        label
        for job_id, label in data.labels.items()
        if job_id.startswith(text) or job_id.endswith(text)
    ]
    return (found[0] + "~").ljust(len(text)) if len(found) == 1 else text


def normal(app: TopApp, data: Seeded) -> str:
    """The screen with ids as labels and moving times masked, for snapshot comparison."""
    lines = [line.rstrip() for line in grab(app).lines]
    ages_end = None
    for y, line in enumerate(lines):
        for job_id, label in data.labels.items():
            line = line.replace(job_id, label.rjust(len(job_id)))
        line = ID_PART.sub(lambda match: id_part(match.group(), data), line)
        line = line.replace(data.server.admin_url, "<admin-url>")
        line = re.sub(r"Server version: [^,]+,", "Server version: <v>,", line)
        line = re.sub(r"Uptime: [^,]+,", "Uptime: <t>,", line)
        line = TIMESTAMP.sub("<timestamp>", line)
        if y == TABLE_TOP - 1:
            found = [m.end() for h in TIME_HEADINGS if (m := re.search(rf"\b{h}\b", line))]
            ages_end = found[0] if found else None
        elif TABLE_TOP <= y < len(lines) - 1 and ages_end is not None and line.strip():
            if "ATTRIBUTES" in line:
                ages_end = None  # the detail panel starts: no more table rows
            else:
                line = (line[: ages_end - 12] + "~age".rjust(12) + line[ages_end:]).rstrip()
        lines[y] = line
    return "\n".join(lines)


async def wait_for(app: TopApp, pilot, predicate: Callable[[], bool], what: str) -> None:
    """Poll the composited screen until `predicate` holds; fail with it if it never does."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; screen:\n{grab(app).text}")
        await pilot.pause(0.02)


def shows(app: TopApp, text: str) -> Callable[[], bool]:
    return lambda: text in grab(app).text


def cursor_label(app: TopApp, data: Seeded) -> str | None:
    """The label of the job on the highlighted row (None when no row is highlighted)."""
    screen = grab(app)
    rows = screen.highlighted()
    if len(rows) != 1:
        return None
    line = screen.lines[rows[0]]
    for job_id, label in data.labels.items():
        if job_id in line:
            return label
    return "?"


def on(app: TopApp, data: Seeded, label: str) -> Callable[[], bool]:
    return lambda: cursor_label(app, data) == label


def last_line(app: TopApp) -> str:
    return grab(app).lines[-1].rstrip()


@contextlib.asynccontextmanager
async def top(
    data: Seeded, size: tuple[int, int], ready: int = 40
) -> AsyncIterator[tuple[TopApp, object]]:
    """A `zizq top` session on the seeded server, its first snapshot on screen."""
    app = TopApp(data.server.admin_url, "0.0.0", refresh_s=0.1)
    async with app.run_test(size=size) as pilot:
        counts = f"Queue: 2 in-flight, {ready} ready, 3 scheduled"
        await wait_for(app, pilot, shows(app, counts), "the seeded counts")
        await wait_for(app, pilot, shows(app, data.in_flight[1]), "the in-flight rows")
        yield app, pilot


async def to_ready(app: TopApp, pilot, data: Seeded) -> None:
    await pilot.press("tab")
    await wait_for(app, pilot, lambda: grab(app).active_tab() == "Ready", "the Ready tab")
    await wait_for(app, pilot, on(app, data, "R00"), "the cursor on R00")


# -- snapshots ---------------------------------------------------------------------------------
# After a deliberate change of the layout, TOP_KEYS_DUMP=<file> appends every screen as it is
# now to <file>: read each one before pasting it over the old one at the end of this module.

SNAPSHOTS: dict[tuple[str, tuple[int, int]], str] = {}


def snapshot(app: TopApp, data: Seeded, name: str, size: tuple[int, int]) -> None:
    shown = normal(app, data)
    if os.environ.get("TOP_KEYS_DUMP"):
        with open(os.environ["TOP_KEYS_DUMP"], "a") as out:
            out.write(f"=== {name} {size}\n{shown}\n")
    assert shown == SNAPSHOTS.get((name, size)), f"screen {name} at {size}:\n{shown}"


def body_rows(size: tuple[int, int]) -> int:
    # 7 header rows, the tab bar, the column headings and the help bar; the table the rest.
    return size[1] - 10


SIZES = pytest.mark.parametrize("size", [NARROW, WIDE], ids=["80x24", "160x40"])


# -- tests ------------------------------------------------------------------------------------


@SIZES
async def test_q_quits(seeded, size):
    async with top(seeded, size) as (app, pilot):
        await pilot.press("q")
        await wait_for(app, pilot, lambda: not app.is_running, "q to end the app")


@SIZES
async def test_ctrl_c_quits_from_the_table_and_from_the_delete_prompt(seeded, size):
    async with top(seeded, size) as (app, pilot):
        await pilot.press("ctrl+c")
        await wait_for(app, pilot, lambda: not app.is_running, "ctrl+c to end the app")
    async with top(seeded, size) as (app, pilot):
        await pilot.press("D")
        await wait_for(app, pilot, lambda: "Delete job" in last_line(app), "the delete prompt")
        await pilot.press("ctrl+c")
        await wait_for(app, pilot, lambda: not app.is_running, "ctrl+c inside the prompt")
    assert seeded.status(seeded.in_flight[0]) == 200  # quitting deleted nothing


@SIZES
async def test_tab_and_shift_tab_cycle_the_lists(seeded, size):
    async with top(seeded, size) as (app, pilot):
        screen = grab(app)
        assert screen.active_tab() == "In-Flight"
        assert "DURATION" in screen.lines[TABLE_TOP - 1]
        assert cursor_label(app, seeded) == "F0"
        snapshot(app, seeded, "in_flight", size)
        await to_ready(app, pilot, seeded)
        assert "DELAY" in grab(app).lines[TABLE_TOP - 1]
        snapshot(app, seeded, "ready", size)
        await pilot.press("j")  # each tab keeps its own cursor
        await wait_for(app, pilot, on(app, seeded, "R01"), "R01")
        await pilot.press("tab")
        await wait_for(app, pilot, lambda: grab(app).active_tab() == "Scheduled", "Scheduled")
        assert "DUE" in grab(app).lines[TABLE_TOP - 1]
        await wait_for(app, pilot, on(app, seeded, "S0"), "the cursor on S0")
        snapshot(app, seeded, "scheduled", size)
        await pilot.press("tab")  # wraps around
        await wait_for(app, pilot, lambda: grab(app).active_tab() == "In-Flight", "wrap")
        assert cursor_label(app, seeded) == "F0"
        await pilot.press("shift+tab")
        await wait_for(app, pilot, lambda: grab(app).active_tab() == "Scheduled", "back")
        await pilot.press("shift+tab")
        await wait_for(app, pilot, lambda: grab(app).active_tab() == "Ready", "back to Ready")
        assert cursor_label(app, seeded) == "R01"
        await pilot.press("shift+tab")
        await wait_for(app, pilot, lambda: grab(app).active_tab() == "In-Flight", "In-Flight")


def marker_column(app: TopApp) -> int:
    """Where the depth bar's upper marker points (the cursor's depth in the whole queue)."""
    return grab(app).lines[4].index("\u25bc")


@SIZES
async def test_arrows_and_j_k_move_one_row(seeded, size):
    async with top(seeded, size) as (app, pilot):
        await to_ready(app, pilot, seeded)
        first = marker_column(app)
        await pilot.press("up", "k")  # already at the top: stays there
        await pilot.press("j")
        await wait_for(app, pilot, on(app, seeded, "R01"), "j to R01")
        assert grab(app).highlighted() == [TABLE_TOP + 1]
        await pilot.press("down")
        await wait_for(app, pilot, on(app, seeded, "R02"), "down to R02")
        assert grab(app).highlighted() == [TABLE_TOP + 2]
        assert marker_column(app) == first + 2  # one bar per job while they fit
        await pilot.press("k")
        await wait_for(app, pilot, on(app, seeded, "R01"), "k to R01")
        await pilot.press("up")
        await wait_for(app, pilot, on(app, seeded, "R00"), "up to R00")
        assert marker_column(app) == first


def first_row_label(app: TopApp, data: Seeded) -> str | None:
    line = grab(app).lines[TABLE_TOP]
    return next((label for job_id, label in data.labels.items() if job_id in line), None)


@SIZES
async def test_page_keys_move_a_screen_and_the_view_follows(seeded, size):
    rows = body_rows(size)
    async with top(seeded, size) as (app, pilot):
        await to_ready(app, pilot, seeded)
        cursor = scroll = 0
        for key in ("pagedown", "pagedown", "pagedown", "pageup", "pageup", "pageup"):
            cursor = max(0, min(39, cursor + (rows if key == "pagedown" else -rows)))
            scroll = min(scroll, cursor) if cursor < scroll else max(scroll, cursor - rows + 1)
            await pilot.press(key)
            label = f"R{cursor:02}"
            await wait_for(app, pilot, on(app, seeded, label), f"{key} to {label}")
            assert first_row_label(app, seeded) == f"R{scroll:02}", key
            assert grab(app).highlighted() == [TABLE_TOP + cursor - scroll], key
        if size == NARROW:
            await pilot.press("pagedown")
            await wait_for(app, pilot, on(app, seeded, "R14"), "pagedown to R14")
            snapshot(app, seeded, "page_down", size)


@SIZES
async def test_g_G_home_end_jump_to_the_ends(seeded, size):
    rows = body_rows(size)
    async with top(seeded, size) as (app, pilot):
        await to_ready(app, pilot, seeded)
        top_marker = marker_column(app)
        for key, label in (("G", "R39"), ("g", "R00"), ("end", "R39"), ("home", "R00")):
            await pilot.press(key)
            await wait_for(app, pilot, on(app, seeded, label), f"{key} to {label}")
            if label == "R39":
                assert first_row_label(app, seeded) == f"R{40 - rows:02}"
                assert grab(app).highlighted() == [TABLE_TOP + rows - 1]
                assert marker_column(app) == top_marker + 39
            else:
                assert first_row_label(app, seeded) == "R00"
                assert marker_column(app) == top_marker


def detail_value(app: TopApp, label: str) -> str | None:
    """A value of the detail panel's ATTRIBUTES column (left of the PAYLOAD heading)."""
    lines = grab(app).lines
    start = next(y for y, line in enumerate(lines) if "ATTRIBUTES" in line)
    payload = lines[start].index(" PAYLOAD")
    for line in lines[start + 1 : -1]:
        name, _, value = line[:payload].strip().partition("  ")
        if name == label:
            return value.strip()
    return None


@SIZES
async def test_i_shows_the_selected_jobs_detail_and_hides_it(seeded, size):
    async with top(seeded, size) as (app, pilot):
        await to_ready(app, pilot, seeded)
        await pilot.press("j", "j", "j")
        await wait_for(app, pilot, on(app, seeded, "R03"), "R03")
        await pilot.press("i")
        await wait_for(app, pilot, shows(app, '"n": 3'), "R03's payload")
        snapshot(app, seeded, "detail", size)
        await pilot.press("j")
        await wait_for(app, pilot, shows(app, '"n": 4'), "the panel following the cursor")
        assert detail_value(app, "Type") == "type_04"
        await pilot.press("i")
        await wait_for(app, pilot, lambda: "ATTRIBUTES" not in grab(app).text, "panel gone")
        last = f"R{body_rows(size) - 1:02}"  # the table has its rows back
        await wait_for(app, pilot, shows(app, seeded.ready[body_rows(size) - 1]), last)


async def test_detail_panel_at_80x24_shows_the_whole_id_and_the_timestamps(seeded):
    async with top(seeded, NARROW) as (app, pilot):
        await to_ready(app, pilot, seeded)
        await pilot.press("i")
        await wait_for(app, pilot, shows(app, '"n": 0'), "R00's payload")
        lines = grab(app).lines
        panel = "\n".join(lines[next(y for y, line in enumerate(lines) if "ATTRIBUTES" in line) :])
        assert seeded.ready[0] in panel
        assert "Ready At" in panel and "Status" in panel
        assert detail_value(app, "ID") == seeded.ready[0]
        assert detail_value(app, "Priority") == "100"
        assert detail_value(app, "Status") == "ready"
        assert TIMESTAMP.fullmatch(detail_value(app, "Ready At") or "")
        assert detail_value(app, "Attempts") == "0"
        assert "more:" not in panel  # nothing left out
        await pilot.press("shift+tab")  # an in-flight job has one more: Dequeued At
        await wait_for(app, pilot, lambda: detail_value(app, "Status") == "in_flight", "F0")
        assert detail_value(app, "ID") == seeded.in_flight[0]
        assert TIMESTAMP.fullmatch(detail_value(app, "Dequeued At") or "")
        assert detail_value(app, "Attempts") == "0"
        assert len(grab(app).highlighted()) == 1  # the table still shows the cursor's row


async def enqueue_extra(data: Seeded, label: str, **fields) -> str:
    job = data.api.enqueue(**fields)
    data.label(job["id"], label)
    return job["id"]


@SIZES
async def test_p_freezes_the_rows_but_not_the_totals(seeded, size):
    async with top(seeded, size) as (app, pilot):
        await to_ready(app, pilot, seeded)
        await pilot.press("p")
        await wait_for(app, pilot, lambda: "PAUSED" in grab(app).lines[1], "the PAUSED mark")
        assert "pResume" in last_line(app)
        late = await enqueue_extra(seeded, "X", queue="late", type="late", priority=0)
        try:
            await wait_for(app, pilot, shows(app, "2 in-flight, 41 ready"), "live totals")
            assert late not in grab(app).text  # the rows stay as they were
            assert first_row_label(app, seeded) == "R00"
            await pilot.press("i")
            await wait_for(app, pilot, shows(app, "resume (p) to toggle"), "i refused")
            assert "ATTRIBUTES" not in grab(app).text
            await pilot.press("slash")
            await wait_for(app, pilot, shows(app, "resume (p) to search"), "/ refused")
            assert "Search" not in last_line(app)
            await pilot.press("p")
            await wait_for(app, pilot, lambda: "PAUSED" not in grab(app).lines[1], "resumed")
            await wait_for(app, pilot, lambda: first_row_label(app, seeded) == "X", "late row")
            assert "pPause" in last_line(app)
        finally:
            assert seeded.api.request("DELETE", f"/jobs/{late}")[0] == 204
        await wait_for(app, pilot, shows(app, "2 in-flight, 40 ready"), "the seed restored")


@SIZES
async def test_D_deletes_only_after_y(seeded, size):
    doomed = await enqueue_extra(seeded, "X", queue="trash", type="doomed", priority=1)
    try:
        async with top(seeded, size, ready=41) as (app, pilot):
            await pilot.press("tab")
            await wait_for(app, pilot, on(app, seeded, "X"), "the cursor on the doomed job")
            prompt = f" Delete job {doomed}? y Yes  n No"
            for decline in ("n", "escape", "N", "q"):
                await pilot.press("D")
                await wait_for(app, pilot, lambda: last_line(app) == prompt, "the prompt")
                if decline == "n" and size == NARROW:
                    snapshot(app, seeded, "delete_prompt", size)
                await pilot.press(decline)
                await wait_for(app, pilot, lambda: "Quit" in last_line(app), f"{decline} declines")
                assert app.is_running and cursor_label(app, seeded) == "X"
                assert seeded.status(doomed) == 200
            await pilot.press("D")
            await wait_for(app, pilot, lambda: last_line(app) == prompt, "the prompt")
            await pilot.press("y")
            await wait_for(app, pilot, shows(app, "2 in-flight, 40 ready"), "the job gone")
            assert doomed not in grab(app).text.replace(f"deleted {doomed}", "")
            # The notice follows the help keys; 80 columns crop the id's tail.
            notice = f"deleted {doomed}"[
                : 80 - len(" TabChange Tab iInfo pPause /Find DDelete qQuit   ")
            ]
            assert notice in last_line(app)
            await wait_for(app, pilot, on(app, seeded, "R00"), "the cursor on the next job")
            assert seeded.status(doomed) == 404
    finally:
        seeded.api.request("DELETE", f"/jobs/{doomed}")


def hint_shown(app: TopApp) -> bool:
    return "n/N match Esc unpin" in last_line(app)


@SIZES
async def test_search_finds_steps_and_unpins(seeded, size):
    # Pilot presses cost ~0.1 s each (Textual waits for idle after every key): short terms.
    async with top(seeded, size) as (app, pilot):
        await to_ready(app, pilot, seeded)
        await pilot.press("slash")
        await wait_for(app, pilot, lambda: last_line(app).startswith(" Search  Type:"), "prompt")
        await pilot.press(*"_2")  # type_20..type_29
        await wait_for(app, pilot, lambda: "Type: _2" in last_line(app), "typed text")
        if size == NARROW:
            snapshot(app, seeded, "search_prompt", size)
        await pilot.press("enter")
        await wait_for(app, pilot, on(app, seeded, "R20"), "the first match")
        await wait_for(app, pilot, lambda: hint_shown(app), "the match hint")
        await pilot.press("n")
        await wait_for(app, pilot, on(app, seeded, "R21"), "n to the next match")
        await pilot.press("N")
        await wait_for(app, pilot, on(app, seeded, "R20"), "N to the previous match")
        await pilot.press("escape")
        await wait_for(app, pilot, lambda: not hint_shown(app), "Esc unpins")
        assert cursor_label(app, seeded) == "R20"  # the cursor stays where it was
        await pilot.press("slash", "x", "escape")  # Esc in the prompt: no new search
        await wait_for(app, pilot, lambda: "Search" not in last_line(app), "prompt closed")
        await pilot.press("n")
        await wait_for(app, pilot, on(app, seeded, "R21"), "the old search goes on")
        if size == WIDE:
            return  # what a query means does not depend on the screen: once is enough

        # Both fields (type AND queue), from the top after g.
        await pilot.press("g", "slash", "backspace", "backspace", *"_1", "tab", *"bil")
        await wait_for(app, pilot, lambda: "Queue: bil" in last_line(app), "both fields")
        await pilot.press("enter")
        await wait_for(app, pilot, on(app, seeded, "R11"), "type _1 in queue bil")
        await pilot.press("n")
        await wait_for(app, pilot, on(app, seeded, "R13"), "the next one in billing")

        # A comma is OR within a field.
        clear = ["backspace"] * 3
        await pilot.press("g", "slash", *clear[:2], *"05,33", "tab", *clear, "enter")
        await wait_for(app, pilot, on(app, seeded, "R05"), "type_05")
        await pilot.press("n")
        await wait_for(app, pilot, on(app, seeded, "R33"), "type_33")
        await pilot.press("n")
        await wait_for(app, pilot, shows(app, "no match"), "no match after the last")
        assert cursor_label(app, seeded) == "R33"


@SIZES
async def test_left_right_scroll_the_table_sideways_when_narrow(seeded, size):
    async with top(seeded, size) as (app, pilot):
        await to_ready(app, pilot, seeded)
        before, before_normal = grab(app).lines, normal(app, seeded)
        await pilot.press("right")
        if size == WIDE:  # the table fits: nothing to scroll
            await pilot.press("j")
            await wait_for(app, pilot, on(app, seeded, "R01"), "R01")
            assert grab(app).lines[TABLE_TOP - 1] == before[TABLE_TOP - 1]
            return
        heading = TABLE_TOP - 1
        await wait_for(
            app, pilot, lambda: grab(app).lines[heading][:72] == before[heading][8:], "8 cells"
        )
        assert "type_00" not in "\n".join(before) and "type_00" in grab(app).text
        await pilot.press(*["right"] * 5)  # one more than the table is wider than the screen
        await wait_for(app, pilot, lambda: "TYPE" in grab(app).lines[heading], "TYPE heading")
        snapshot(app, seeded, "scrolled_right", size)
        await pilot.press(*["left"] * 5)
        await wait_for(app, pilot, lambda: normal(app, seeded) == before_normal, "the left edge")


# -- the expected screens (ids as labels, times masked; see `normal`) -------------------------

SNAPSHOTS.update(
    {
        ("in_flight", NARROW): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
        ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                 45 jobs]
        ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE              DURATION   ATTEMPTS TY
                         F0      32768 hot                    ~age          0 bu
                         F1      32768 hot                    ~age          0 bu












 TabChange Tab iInfo pPause /Find DDelete qQuit""",
        ("in_flight", WIDE): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
        ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                                                         45 jobs]
        ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                        DURATION   ATTEMPTS TYPE
                         F0      32768 hot                              ~age          0 busy_0
                         F1      32768 hot                              ~age          0 busy_1




























 TabChange Tab iInfo pPause /Find DDelete qQuit""",
        ("ready", NARROW): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
          ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                 45 jobs]
          ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                 DELAY   ATTEMPTS TY
                        R00        100 emails                 ~age          0 ty
                        R01        101 billing                ~age          0 ty
                        R02        102 emails                 ~age          0 ty
                        R03        103 billing                ~age          0 ty
                        R04        104 emails                 ~age          0 ty
                        R05        105 billing                ~age          0 ty
                        R06        106 emails                 ~age          0 ty
                        R07        107 billing                ~age          0 ty
                        R08        108 emails                 ~age          0 ty
                        R09        109 billing                ~age          0 ty
                        R10        110 emails                 ~age          0 ty
                        R11        111 billing                ~age          0 ty
                        R12        112 emails                 ~age          0 ty
                        R13        113 billing                ~age          0 ty
 TabChange Tab iInfo pPause /Find DDelete qQuit""",
        ("ready", WIDE): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
          ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                                                         45 jobs]
          ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                           DELAY   ATTEMPTS TYPE
                        R00        100 emails                           ~age          0 type_00
                        R01        101 billing                          ~age          0 type_01
                        R02        102 emails                           ~age          0 type_02
                        R03        103 billing                          ~age          0 type_03
                        R04        104 emails                           ~age          0 type_04
                        R05        105 billing                          ~age          0 type_05
                        R06        106 emails                           ~age          0 type_06
                        R07        107 billing                          ~age          0 type_07
                        R08        108 emails                           ~age          0 type_08
                        R09        109 billing                          ~age          0 type_09
                        R10        110 emails                           ~age          0 type_10
                        R11        111 billing                          ~age          0 type_11
                        R12        112 emails                           ~age          0 type_12
                        R13        113 billing                          ~age          0 type_13
                        R14        114 emails                           ~age          0 type_14
                        R15        115 billing                          ~age          0 type_15
                        R16        116 emails                           ~age          0 type_16
                        R17        117 billing                          ~age          0 type_17
                        R18        118 emails                           ~age          0 type_18
                        R19        119 billing                          ~age          0 type_19
                        R20        120 emails                           ~age          0 type_20
                        R21        121 billing                          ~age          0 type_21
                        R22        122 emails                           ~age          0 type_22
                        R23        123 billing                          ~age          0 type_23
                        R24        124 emails                           ~age          0 type_24
                        R25        125 billing                          ~age          0 type_25
                        R26        126 emails                           ~age          0 type_26
                        R27        127 billing                          ~age          0 type_27
                        R28        128 emails                           ~age          0 type_28
                        R29        129 billing                          ~age          0 type_29
 TabChange Tab iInfo pPause /Find DDelete qQuit""",
        ("scheduled", NARROW): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
                                                  ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                 45 jobs]
                                                  ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                   DUE   ATTEMPTS TY
                         S0      32768 later                  ~age          0 re
                         S1      32768 later                  ~age          0 re
                         S2      32768 later                  ~age          0 re











 TabChange Tab iInfo pPause /Find DDelete qQuit""",
        ("scheduled", WIDE): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
                                                  ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                                                         45 jobs]
                                                  ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                             DUE   ATTEMPTS TYPE
                         S0      32768 later                            ~age          0 report_0
                         S1      32768 later                            ~age          0 report_1
                         S2      32768 later                            ~age          0 report_2



























 TabChange Tab iInfo pPause /Find DDelete qQuit""",
        ("page_down", NARROW): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
                        ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                 45 jobs]
                        ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                 DELAY   ATTEMPTS TY
                        R01        101 billing                ~age          0 ty
                        R02        102 emails                 ~age          0 ty
                        R03        103 billing                ~age          0 ty
                        R04        104 emails                 ~age          0 ty
                        R05        105 billing                ~age          0 ty
                        R06        106 emails                 ~age          0 ty
                        R07        107 billing                ~age          0 ty
                        R08        108 emails                 ~age          0 ty
                        R09        109 billing                ~age          0 ty
                        R10        110 emails                 ~age          0 ty
                        R11        111 billing                ~age          0 ty
                        R12        112 emails                 ~age          0 ty
                        R13        113 billing                ~age          0 ty
                        R14        114 emails                 ~age          0 ty
 TabChange Tab iInfo pPause /Find DDelete qQuit""",
        ("detail", NARROW): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
             ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                 45 jobs]
             ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                 DELAY   ATTEMPTS TY
                        R00        100 emails                 ~age          0 ty
                        R01        101 billing                ~age          0 ty
                        R02        102 emails                 ~age          0 ty
                        R03        103 billing                ~age          0 ty
  ATTRIBUTES                              PAYLOAD
  ID                                 R03  {
  Queue        billing                      "n": 3
  Type         type_03                    }
  Priority     103
  Status       ready
  Ready At     <timestamp>
  Attempts     0


 TabChange Tab iInfo pPause /Find DDelete qQuit""",
        ("detail", WIDE): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
             ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                                                         45 jobs]
             ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                           DELAY   ATTEMPTS TYPE
                        R00        100 emails                           ~age          0 type_00
                        R01        101 billing                          ~age          0 type_01
                        R02        102 emails                           ~age          0 type_02
                        R03        103 billing                          ~age          0 type_03
                        R04        104 emails                           ~age          0 type_04
                        R05        105 billing                          ~age          0 type_05
                        R06        106 emails                           ~age          0 type_06
                        R07        107 billing                          ~age          0 type_07
                        R08        108 emails                           ~age          0 type_08
                        R09        109 billing                          ~age          0 type_09
                        R10        110 emails                           ~age          0 type_10
                        R11        111 billing                          ~age          0 type_11
                        R12        112 emails                           ~age          0 type_12
                        R13        113 billing                          ~age          0 type_13
                        R14        114 emails                           ~age          0 type_14
                        R15        115 billing                          ~age          0 type_15
                        R16        116 emails                           ~age          0 type_16
  ATTRIBUTES                                                                     PAYLOAD
  ID                                            R03                              {
  Queue                   billing                                                  "n": 3
  Type                    type_03                                                }
  Priority                103
  Status                  ready
  Ready At                <timestamp>
  Attempts / Retry Limit  0





 TabChange Tab iInfo pPause /Find DDelete qQuit""",
        ("delete_prompt", NARROW): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 41 ready, 3 scheduled
          ▼
  Depth[││││││││││││││││││││││││││││││││││││││││││││││                46 jobs]
          ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                 DELAY   ATTEMPTS TY
                          X          1 trash                  ~age          0 do
                        R00        100 emails                 ~age          0 ty
                        R01        101 billing                ~age          0 ty
                        R02        102 emails                 ~age          0 ty
                        R03        103 billing                ~age          0 ty
                        R04        104 emails                 ~age          0 ty
                        R05        105 billing                ~age          0 ty
                        R06        106 emails                 ~age          0 ty
                        R07        107 billing                ~age          0 ty
                        R08        108 emails                 ~age          0 ty
                        R09        109 billing                ~age          0 ty
                        R10        110 emails                 ~age          0 ty
                        R11        111 billing                ~age          0 ty
                        R12        112 emails                 ~age          0 ty
 Delete job                         X? y Yes  n No""",
        ("search_prompt", NARROW): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
          ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                 45 jobs]
          ▲
   In-Flight   Ready   Scheduled
                         ID   PRIORITY QUEUE                 DELAY   ATTEMPTS TY
                        R00        100 emails                 ~age          0 ty
                        R01        101 billing                ~age          0 ty
                        R02        102 emails                 ~age          0 ty
                        R03        103 billing                ~age          0 ty
                        R04        104 emails                 ~age          0 ty
                        R05        105 billing                ~age          0 ty
                        R06        106 emails                 ~age          0 ty
                        R07        107 billing                ~age          0 ty
                        R08        108 emails                 ~age          0 ty
                        R09        109 billing                ~age          0 ty
                        R10        110 emails                 ~age          0 ty
                        R11        111 billing                ~age          0 ty
                        R12        112 emails                 ~age          0 ty
                        R13        113 billing                ~age          0 ty
 Search  Type: _2                  Queue: …""",
        ("scrolled_right", NARROW): """\
  Zizq 0.0.0
● Connected <admin-url>
  Server version: <v>, Uptime: <t>, Tier: pro
  Queue: 2 in-flight, 40 ready, 3 scheduled
          ▼
  Depth[│││││││││││││││││││││││││││││││││││││││││││││                 45 jobs]
          ▲
   In-Flight   Ready   Scheduled
UEUE                 DELAY   ATTEMPTS TYPE
mails                 ~age          0 type_00
illing                ~age          0 type_01
mails                 ~age          0 type_02
illing                ~age          0 type_03
mails                 ~age          0 type_04
illing                ~age          0 type_05
mails                 ~age          0 type_06
illing                ~age          0 type_07
mails                 ~age          0 type_08
illing                ~age          0 type_09
mails                 ~age          0 type_10
illing                ~age          0 type_11
mails                 ~age          0 type_12
illing                ~age          0 type_13
 TabChange Tab iInfo pPause /Find DDelete qQuit""",
    }
)
