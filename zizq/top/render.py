"""Draw a `TopModel` as lines of Rich text, one per terminal row, each exactly `width` cells.

Pure functions of the model, the screen size and the time: Textual only shows the result,
so what the screen looks like can be checked without a terminal.

Layout, top to bottom: a 7-row header (versions, connection, uptime and tier, counts, the
depth bar between its two markers), the tab bar, the job table (with the detail panel and
the free tier's notice below it when they apply), and a one-row help bar that the delete
and search prompts take over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rich.style import Style
from rich.text import Text

from zizq.top.format import compact_duration, due_in, elapsed_since, timestamp
from zizq.top.model import LIST_NAMES, TAB_TITLES, Connection, Job, TopModel

__all__ = ["Layout", "layout", "render_screen"]

HEADER_ROWS = 7
MIN_TABLE_WIDTH = 120  # narrower screens scroll the table sideways (left/right)
DETAIL_MAX_ROWS = 13  # the heading and every attribute a job can have
DETAIL_MIN_ROWS = 10  # the heading and 9 attributes: all of a job without options
MIN_TABLE_ROWS = 3
TABLE_ROWS_UNDER_DETAIL = 4  # the heading and 3 rows (the cursor's and its neighbours)
CAP_ROWS = 4
DEPTH_MAX_WIDTH = 120
DETAIL_LABEL_WIDTH = 26  # "  Attempts / Retry Limit  "
DETAIL_VALUE_WIDTH = 26  # a timestamp with its offset (job ids are 25)
DETAIL_PAYLOAD_MIN_WIDTH = 24
DETAIL_PAYLOAD_WIDTH = 40  # payload cells wanted beside full labels; fewer: short labels
# Narrow screens: shorter labels, so that a value and the payload both fit beside each other.
SHORT_LABELS = {"Attempts / Retry Limit": "Attempts", "Retention Policy": "Retention"}
DETAIL_SHORT_LABEL_WIDTH = 15  # "  Dequeued At  "

DIM = Style(color="bright_black")
BOLD = Style(bold=True)
TAB_STYLE = Style(color="black", bgcolor="cyan")
ACTIVE_TAB = Style(color="black", bgcolor="green", bold=True)
TABLE_HEADER = Style(color="black", bgcolor="green")
CURSOR = Style(color="black", bgcolor="bright_cyan")
KEY = Style(color="white", bold=True)
LABEL = Style(color="black", bgcolor="cyan")
SECTION_COLORS = ("bright_yellow", "blue", "magenta")  # in-flight, ready, scheduled
STATUS_COLORS = {
    Connection.CONNECTED: "green",
    Connection.CONNECTING: "yellow",
    Connection.DISCONNECTED: "red",
}
TIME_HEADINGS = ("DURATION", "DELAY", "DUE")


@dataclass(frozen=True)
class Layout:
    table_rows: int  # rows of the table, its heading row included
    detail_rows: int
    cap_rows: int

    @property
    def body_rows(self) -> int:
        return max(0, self.table_rows - 1)


def layout(model: TopModel, height: int) -> Layout:
    """Rows of the table, the detail panel and the free tier's notice below the tab bar.

    The panel gets half the rows, at least DETAIL_MIN_ROWS (every attribute of a job with
    the default options) and at most DETAIL_MAX_ROWS (every attribute a job can have),
    leaving the table at least its heading and 3 rows; on a short screen the free tier's
    notice shrinks to one line to make room. Its size depends only on the screen, not on the job
    under the cursor, so moving the cursor never resizes the table.
    """
    content = max(0, height - HEADER_ROWS - 2)
    cap_rows = CAP_ROWS if model.cap is not None else 0
    detail_rows = 0
    if model.detail:
        wanted = min(DETAIL_MAX_ROWS, max(DETAIL_MIN_ROWS, content // 2))
        if cap_rows and content - wanted - cap_rows < TABLE_ROWS_UNDER_DETAIL:
            cap_rows = 1
        detail_rows = min(wanted, content - cap_rows - TABLE_ROWS_UNDER_DETAIL)
        if detail_rows < 2:  # not even one attribute: no panel
            detail_rows = 0
            cap_rows = CAP_ROWS if model.cap is not None else 0
    return Layout(max(0, content - detail_rows - cap_rows), detail_rows, cap_rows)


def render_screen(model: TopModel, width: int, height: int, now_ms: int) -> list[Text]:
    shape = layout(model, height)
    lines = header(model, width)
    lines.append(tab_bar(model))
    lines.extend(table(model, width, shape.table_rows, now_ms))
    if shape.detail_rows:
        lines.extend(detail_panel(model, width, shape.detail_rows))
    if shape.cap_rows:
        lines.extend(cap_notice(model, width, shape.cap_rows))
    if height <= 0:
        return []
    lines = lines[: height - 1]
    lines += [Text("")] * (height - 1 - len(lines))
    lines.append(help_bar(model))  # always on the last row, however small the screen
    return [fit(line, width) for line in lines]


def fit(line: Text, width: int) -> Text:
    """Crop or pad `line` to exactly `width` cells."""
    line = line.copy()
    line.truncate(width, overflow="crop", pad=True)
    return line


def _clean(value: object) -> str:
    """Text from the server, with control characters (which would move the cursor) made visible."""
    text = str(value)
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


# -- header -------------------------------------------------------------------------------


def header(model: TopModel, width: int) -> list[Text]:
    title = Text("  ")
    title.append(f"Zizq {model.client_version}", BOLD)
    status = Text("\u25cf ", Style(color=STATUS_COLORS[model.connection]))
    status.append(model.connection.value, Style(color=STATUS_COLORS[model.connection], bold=True))
    status.append(f" {model.url}")
    if model.paused:
        status.append("   PAUSED", Style(color="black", bgcolor="yellow", bold=True))
    if model.connection is not Connection.CONNECTED and model.connection_note:
        status.append(f"  {model.connection_note}", DIM)
    server = model.server
    if server is None or model.connection is not Connection.CONNECTED:
        return [title, status, Text(""), Text(""), Text(""), Text(""), Text("")]
    uptime = compact_duration(server.uptime_ms) if server.uptime_ms is not None else "?"
    info = Text("  ")
    for index, (label, value) in enumerate(
        (("Server version", server.version), ("Uptime", uptime), ("Tier", server.tier))
    ):
        info.append(("" if index == 0 else ", ") + f"{label}: ", Style(color="cyan"))
        info.append(_clean(value), BOLD)
    counts = Text("  ")
    counts.append("Queue: ", Style(color="cyan"))
    for index, (name, label) in enumerate(
        zip(LIST_NAMES, ("in-flight", "ready", "scheduled"), strict=True)
    ):
        counts.append(
            ("" if index == 0 else ", ") + f"{server.totals[name]}",
            Style(color=SECTION_COLORS[index], bold=True),
        )
        counts.append(f" {label}", DIM)
    return [title, status, info, counts, *depth_bar(model, width)]


def depth_bar(model: TopModel, width: int) -> list[Text]:
    """The queue as bars per status, and markers above and below at the cursor's depth."""
    totals = [model.total(index) for index in range(3)]
    total = sum(totals)
    label = f"{total} jobs"
    prefix = 8  # "  Depth["
    bar_width = max(0, min(width, DEPTH_MAX_WIDTH) - prefix - len(label) - 3)
    if total == 0 or bar_width == 0:
        bars = [0, 0, 0]
    elif total <= bar_width:
        bars = list(totals)
    else:
        first = round(totals[0] / total * bar_width)
        second = round(totals[1] / total * bar_width)
        bars = [first, second, max(0, bar_width - first - second)]
    line = Text("  ")
    line.append("Depth", Style(color="cyan"))
    line.append("[", BOLD)
    for count, color in zip(bars, SECTION_COLORS, strict=True):
        line.append("\u2502" * count, Style(color=color, bold=True))
    line.append(" " * max(0, bar_width - sum(bars)))
    line.append(label, DIM)
    line.append("]", BOLD)
    active = model.active
    section_total, section_bars = totals[active], bars[active]
    if section_total == 0:
        return [Text(""), line, Text("")]
    cursor = model.tab.cursor
    if section_bars == 0:
        inside = 0
    elif total <= bar_width:
        inside = min(cursor, section_bars - 1)
    else:
        inside = min(round(cursor / section_total * section_bars), section_bars - 1)
    column = prefix + sum(bars[:active]) + inside
    color = Style(color=SECTION_COLORS[active])
    return [
        Text(" " * column) + Text("\u25bc", color),
        line,
        Text(" " * column) + Text("\u25b2", color),
    ]


def tab_bar(model: TopModel) -> Text:
    line = Text("  ")
    for index, title in enumerate(TAB_TITLES):
        if index:
            line.append(" ")
        line.append(f" {title} ", ACTIVE_TAB if index == model.active else TAB_STYLE)
    return line


# -- the job table ---------------------------------------------------------------------------


def _columns(width: int) -> list[tuple[int, str]]:
    """(width, alignment) of ID, PRIORITY, QUEUE, time, ATTEMPTS, TYPE at `width` cells."""
    fill = max(0, width - (27 + 10 + 12 + 10) - 5)
    queue = fill // 4
    return [(27, "right"), (10, "right"), (queue, "left"), (12, "right"), (10, "right"),
            (fill - queue, "left")]  # fmt: skip


def _cell(text: str, size: int, align: str) -> str:
    if len(text) > size:
        return text[len(text) - size :] if align == "right" else text[:size]
    return text.rjust(size) if align == "right" else text.ljust(size)


def _row(cells: list[tuple[str, Style | None]], width: int, base: Style | None = None) -> Text:
    line = Text(style=base or "")
    for index, ((text, style), (size, align)) in enumerate(
        zip(cells, _columns(width), strict=True)
    ):
        if index:
            line.append(" ")
        line.append(_cell(text, size, align), style)
    return line


def _attempt_style(attempts: int) -> Style | None:
    return None if attempts == 0 else Style(color="yellow" if attempts == 1 else "red")


def job_time(model: TopModel, job: Job, now_ms: int) -> str:
    name = LIST_NAMES[model.active]
    if name == "in_flight":
        return elapsed_since(job.get("dequeued_at"), now_ms)
    if name == "ready":
        return elapsed_since(job.get("ready_at"), now_ms)
    return due_in(job.get("ready_at"), now_ms)


def table(model: TopModel, width: int, rows: int, now_ms: int) -> list[Text]:
    if rows <= 0:
        return []
    virtual = max(width, MIN_TABLE_WIDTH)
    scroll = min(model.h_scroll[model.active], virtual - width)
    model.h_scroll[model.active] = scroll  # a wider screen must not keep a stale offset
    headings = ["ID", "PRIORITY", "QUEUE", TIME_HEADINGS[model.active], "ATTEMPTS", "TYPE"]
    lines = [_row([(text, None) for text in headings], virtual, TABLE_HEADER)]
    tab = model.tab
    for position in range(tab.scroll, tab.scroll + rows - 1):
        job = tab.row(position)
        if job is None:
            lines.append(Text(""))
            continue
        attempts = job.get("attempts") if isinstance(job.get("attempts"), int) else 0
        marked = _attempt_style(attempts)
        cells = [
            (_clean(job.get("id", "")), marked),
            (str(job.get("priority", "")), BOLD),
            (_clean(job.get("queue", "")), None),
            (job_time(model, job, now_ms), None),
            (str(attempts), (marked or DIM) + BOLD),
            (_clean(job.get("job_type", job.get("type", ""))), marked),
        ]
        if position == tab.cursor:
            cells = [(text, None) for text, _style in cells]
        lines.append(_row(cells, virtual, CURSOR if position == tab.cursor else None))
    return [line[scroll : scroll + width] for line in lines]


# -- detail panel and notices ------------------------------------------------------------------


def _attributes(model: TopModel, job: Job) -> list[tuple[str, str]]:
    attempts = str(job.get("attempts", 0))
    if isinstance(job.get("retry_limit"), int):
        attempts += f"/{job['retry_limit']}"
    rows = [
        ("ID", _clean(job.get("id", ""))),
        ("Queue", _clean(job.get("queue", ""))),
        ("Type", _clean(job.get("job_type", ""))),
        ("Priority", str(job.get("priority", ""))),
        ("Status", LIST_NAMES[model.active]),
        ("Ready At", timestamp(job.get("ready_at"))),
    ]
    # Most telling first: a short screen shows the first ones (and says what it left out).
    rows.append(("Attempts / Retry Limit", attempts))
    if job.get("dequeued_at"):
        rows.append(("Dequeued At", timestamp(job["dequeued_at"])))
    if job.get("failed_at"):
        rows.append(("Failed At", timestamp(job["failed_at"])))
    backoff = job.get("backoff")
    if isinstance(backoff, dict):
        rows.append(
            (
                "Backoff",
                f"base={backoff.get('base_ms')}ms,exponent={backoff.get('exponent')},"
                f"jitter={backoff.get('jitter_ms')}ms",
            )
        )
    retention = job.get("retention")
    if isinstance(retention, dict):
        parts = [
            f"{kind}={compact_duration(retention[f'{kind}_ms'])}"
            for kind in ("completed", "dead")
            if isinstance(retention.get(f"{kind}_ms"), int)
        ]
        if parts:
            rows.append(("Retention Policy", ", ".join(parts)))
    if job.get("unique_key"):
        rows.append(("Unique Key", f"{job.get('unique_while') or 'queued'} {job['unique_key']}"))
    return rows


def _detail_columns(attributes: list[tuple[str, str]], width: int) -> tuple[int, int, bool]:
    """(label width, attributes column width, short labels) for a panel `width` wide.

    The attributes take half the screen, or more when a whole value needs it, leaving the
    payload at least DETAIL_PAYLOAD_MIN_WIDTH cells. Below DETAIL_PAYLOAD_WIDTH cells left
    for the payload, labels are shortened (80 columns: 41 for attributes, 39 for payload).
    """
    half = width // 2
    longest = max([DETAIL_VALUE_WIDTH, *(len(value) for _, value in attributes)])
    short = width - DETAIL_LABEL_WIDTH - DETAIL_VALUE_WIDTH < DETAIL_PAYLOAD_WIDTH
    label_width = DETAIL_SHORT_LABEL_WIDTH if short else DETAIL_LABEL_WIDTH
    wanted = min(label_width + longest, width - DETAIL_PAYLOAD_MIN_WIDTH)
    return label_width, max(half, wanted), short


def detail_panel(model: TopModel, width: int, rows: int) -> list[Text]:
    job = model.selected()
    attributes = _attributes(model, job) if job is not None else [("ID", "")]
    label_width, left_width, short = _detail_columns(attributes, width)
    heading = fit(Text("  ATTRIBUTES", BOLD), left_width) + Text(" PAYLOAD", BOLD)
    if job is None:
        lines = [heading, Text("  No job selected", DIM)]
    else:
        shown = [
            Text(f"  {SHORT_LABELS.get(label, label) if short else label}".ljust(label_width), DIM)
            + Text(value)
            for label, value in attributes
        ]
        if len(shown) > rows - 1 >= 1:  # a short screen: say what did not fit
            hidden = attributes[rows - 2 :]
            names = ", ".join(SHORT_LABELS.get(label, label) for label, _ in hidden)
            shown = shown[: rows - 2] + [Text(f"  +{len(hidden)} more: {names}", DIM)]
        if job.get("payload_truncated"):
            size = job.get("payload_size")
            payload = [
                Text(f" (too large to show here: {size} bytes)", DIM),
                Text(f" GET /jobs/{_clean(job.get('id', ''))} on the primary API", DIM),
            ]
        elif "payload" in job:
            payload = [
                Text(f" {_clean(line)}")
                for line in json.dumps(job["payload"], indent=2, ensure_ascii=False).splitlines()
            ]
        else:
            payload = [Text(" (not loaded)", DIM)]
        lines = [heading]
        for index in range(max(len(shown), len(payload))):
            left = shown[index] if index < len(shown) else Text("")
            right = payload[index] if index < len(payload) else Text("")
            # With no payload line beside it, a long value may run on into that column.
            lines.append(fit(left, left_width) + right if right.plain else left)
    lines = lines[:rows]
    return lines + [Text("")] * (rows - len(lines))


def cap_notice(model: TopModel, width: int, rows: int = CAP_ROWS) -> list[Text]:
    cap = model.cap
    if rows < CAP_ROWS:  # squeezed by the detail panel: one line
        words = [f"Display capped at {cap} jobs: a pro license shows everything."]
    else:
        words = [
            "",
            f"Display is currently capped at {cap} jobs.",
            "Upgrade to a pro license to see everything.",
            "",
        ]
    return [Text(text.center(width).rstrip(), DIM) for text in words[:rows]]


def help_bar(model: TopModel) -> Text:
    if model.pending_delete is not None:
        line = Text(" Delete job ", BOLD)
        line.append(model.pending_delete, Style(color="red", bold=True))
        line.append("? ", BOLD)
        line.append("y", KEY)
        line.append(" Yes  ", BOLD)
        line.append("n", KEY)
        line.append(" No", BOLD)
        return line
    if model.search is not None:
        prompt = model.search
        line = Text(" Search ", Style(color="black", bgcolor="yellow", bold=True))
        line.append(" ")
        for name, label in (("type", "Type: "), ("queue", "Queue: ")):
            active = prompt.active == name
            value = prompt.fields[name]
            line.append(label, BOLD if active else DIM)
            shown = value if value or active else "\u2026"
            if active:
                caret = prompt.carets[name]
                line.append(shown[:caret])
                line.append(shown[caret : caret + 1] or " ", Style(reverse=True))
                line.append(shown[caret + 1 :])
                shown += " "
            else:
                line.append(shown, DIM)
            line.append(" " * max(1, 20 - len(shown)))
        return line
    line = Text(" ")
    items = [("Tab", "Change Tab"), ("i", "Info"), ("p", "Resume" if model.paused else "Pause"),
             ("/", "Find"), ("D", "Delete"), ("q", "Quit")]  # fmt: skip
    for index, (key, label) in enumerate(items):
        if index:
            line.append(" ")
        crossed = key == "i" and model.paused
        line.append(key, KEY + Style(strike=crossed))
        line.append(label, LABEL + Style(strike=crossed))
    # What matters most first: a narrow screen crops from the right.
    if model.notice:
        line.append(f"   {model.notice}", Style(color="yellow"))
    arrow = model.resume_hint()
    if arrow:
        line.append(f"   {arrow} Resume to scroll further", Style(color="yellow"))
    if model.pinned is not None:
        line.append("   ")
        line.append("n", KEY)
        line.append("/", DIM)
        line.append("N", KEY)
        line.append(" match ", DIM)
        line.append("Esc", KEY)
        line.append(" unpin", DIM)
    return line
