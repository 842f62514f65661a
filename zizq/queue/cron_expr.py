"""Cron expressions and time zones: validate once, then find fire times quickly.

cronsim does the field matching. This module decides how an expression meets a DST
change, the way the reference's croner does (OCPS):

- a *fixed-time* expression (one value each for second, minute and hour, no `*` or step,
  e.g. `30 2 * * *`) is walked in local wall-clock time: a time skipped by a spring-forward
  fires once at the first real second after the gap, a time repeated by a fall-back fires
  once, at its first occurrence;
- every other expression (`*/30 * * * *`, `0 0-6 * * *`) fires at each real instant whose
  local time matches, so skipped times do not fire, repeated ones fire twice, and
  intervals are kept.

cronsim only ever walks naive times here: its own aware mode steps hour by hour in real
time and misses times after a half-hour change (Lord Howe Island).

Day-of-month and day-of-week combine as in croner: AND when either is exactly `*` (or
`?`), OR otherwise. Fixed-offset zones (UTC) skip the time-zone work altogether.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from bisect import bisect_left
from datetime import UTC, datetime, time, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from cronsim.cronsim import Field

from zizq.queue.errors import InvalidInput

MAX_EXPRESSION_CHARS = 256
MAX_ZONE_CHARS = 64

# Croner's nicknames, plus vixie's @midnight (croner 3 lacks it; accepting more is harmless).
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELD_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_DOM, _DOW = 3, 5
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
# "-SUN" first, as croner does: the end of a range such as FRI-SUN is 7, not 0.
_WEEKDAYS = [("-SUN", "-7")] + [
    (d, str(i)) for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])
]

_PRINTABLE = re.compile(r"[\x20-\x7e\t\r\n]*")
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
# Keys of zones that are UTC all year: they take the fast fixed-offset path.
_UTC_KEYS = frozenset(
    {"UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu"}
    | {"GMT", "Etc/GMT", "Greenwich", "Etc/Greenwich"}
)
# The parse-time check walks from here; cronsim gives up after 50 years without a match,
# and every expression that passes its constructor fires at least every 40 years (a fifth
# weekday in February), so a StopIteration here means "never".
_ANCHOR = datetime(2000, 1, 1)
_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)
# A search passes over a candidate or two (a first pass gone by, a time lost to a gap).
_MAX_SKIPS = 8
_PROBE = 86400


class CronError(InvalidInput):
    """An invalid cron expression or time zone; the message starts with the field name."""


class _Rejected(ValueError):
    """A reason without the field name; the public functions add it."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed expression. Equal and hashed by its text; safe to share across threads."""

    text: str
    # The 6-field form handed to cronsim (seconds first, names and `?` replaced).
    cron: str = dataclasses.field(compare=False)
    fixed_time: bool = dataclasses.field(compare=False)
    # A parsed CronSim's attributes: each search copies them instead of parsing again.
    _state: dict = dataclasses.field(compare=False, repr=False)
    # The sorted hours, minutes and seconds that match, to jump over a day's dead time.
    _times: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = dataclasses.field(
        compare=False, repr=False
    )

    def next_after(self, after_ms: int, zone: tzinfo) -> int | None:
        """The first fire time (epoch ms, whole seconds) after the second holding `after_ms`.

        Evaluated in `zone` (a ZoneInfo or a fixed-offset timezone). None when nothing fires
        within cronsim's 50-year horizon or the instant is out of datetime's range.
        """
        return self._next(after_ms // 1000, zone, jump=True)

    def _next(self, second: int, zone: tzinfo, jump: bool) -> int | None:
        # `jump=False` is plain cronsim from `second`: the tests check the jump changes nothing.
        try:
            offset = _static_offset(zone)
            if offset is not None:
                return self._next_static(second, offset, jump)
            if self.fixed_time:
                return self._next_wall_clock(second, zone, jump)
            return self._next_real_time(second, zone, jump)
        except (StopIteration, OverflowError, ValueError, OSError):
            return None

    def _search(self, start: datetime) -> CronSim:
        if not _FAST_COPY:
            return CronSim(self.cron, start)
        search = CronSim.__new__(CronSim)
        search.__dict__.update(self._state)
        search.dt = start
        return search

    def _skip_dead_time(self, wall: datetime) -> datetime:
        """The latest naive time >= `wall` with no matching time of day after `wall` up to it.

        cronsim steps minute by minute and hour by hour; starting it one second before the
        next matching time of day saves most of those steps (the day is still its check).
        """
        hours, minutes, seconds = self._times
        wanted = wall + _SECOND
        found = _next_time_of_day(self._times, wanted.hour, wanted.minute, wanted.second)
        if found == (wanted.hour, wanted.minute, wanted.second):
            return wall  # the very next second matches: nothing to skip
        day = wanted.date()
        if found is None:
            day += _DAY
            found = (hours[0], minutes[0], seconds[0])
        return datetime.combine(day, time(*found)) - _SECOND

    def _next_static(self, second: int, offset: int, jump: bool) -> int:
        # No DST: wall time is the instant plus a constant, so walk it naively.
        wall = _EPOCH + timedelta(seconds=second + offset)
        found = next(self._search(self._skip_dead_time(wall) if jump else wall))
        return ((found - _EPOCH) // _SECOND - offset) * 1000

    def _next_real_time(self, second: int, zone: tzinfo, jump: bool) -> int | None:
        # The first real instant whose wall-clock time matches. cronsim finds the first
        # matching wall time after now's, walking naive times (its own aware stepping misses
        # times after a half-hour change, as Lord Howe's); then that wall time is placed:
        # skipped by a gap, it does not happen; repeated, its first pass still to come counts.
        offset = _offset_at(second + 1, zone)
        wall = _EPOCH + timedelta(seconds=second + offset)
        search = self._search(self._skip_dead_time(wall) if jump else wall)
        for _ in range(_MAX_SKIPS):
            found = next(search)
            instant = int(found.replace(tzinfo=zone, fold=0).timestamp())
            if _wall_of(instant, zone) != found:  # in a gap: go on from its end
                resume = _wall_of(_gap_end(found, zone), zone) - _SECOND
                search = self._search(self._skip_dead_time(resume) if jump else resume)
                continue
            if instant <= second:  # now is in the second pass: the first has gone
                instant = int(found.replace(tzinfo=zone, fold=1).timestamp())
            if instant > second:
                break
        else:
            return None
        earlier = self._in_fall_back(second, offset, wall, instant, zone, jump)
        return (instant if earlier is None else earlier) * 1000

    def _in_fall_back(
        self, second: int, offset: int, wall: datetime, instant: int, zone: tzinfo, jump: bool
    ) -> int | None:
        """An earlier fire in the repeated wall times of a fall-back soon after now, if any.

        A fall-back brings back wall times up to now's, which the search from now's wall
        time did not look at. Offsets never move by more than a day and never change twice
        within four days, so one look two days ahead finds any such fall-back.
        """
        horizon = min(instant, second + 2 * 86400)
        later_offset = _offset_at(horizon, zone)
        if later_offset >= offset:
            return None
        change = _first_change(second + 1, horizon, zone, offset)
        if change is None:
            return None
        back_to = _EPOCH + timedelta(seconds=change + later_offset)
        if back_to > wall:
            return None
        start = back_to - _SECOND
        found = next(self._search(self._skip_dead_time(start) if jump else start))
        return (found - _EPOCH) // _SECOND - later_offset if found <= wall else None

    def _next_wall_clock(self, second: int, zone: tzinfo, jump: bool) -> int | None:
        # Naive wall-clock times: each local time is seen once, whatever DST does.
        wall = datetime.fromtimestamp(second, zone).replace(tzinfo=None, fold=0)
        search = self._search(self._skip_dead_time(wall) if jump else wall)
        for _ in range(_MAX_SKIPS):
            found = _instant_of(next(search), zone)
            # Earlier is the first occurrence of a repeated time that `second` already
            # follows (the wall time of the second pass is behind it): skip it.
            if found is not None and found > second:
                return found * 1000
        return None


def _next_time_of_day(
    times: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], h: int, m: int, s: int
) -> tuple[int, int, int] | None:
    """The first matching (hour, minute, second) at or after h:m:s, or None that day."""
    hours, minutes, seconds = times
    i = bisect_left(hours, h)
    if i == len(hours):
        return None
    if hours[i] == h:
        j = bisect_left(minutes, m)
        if j < len(minutes):
            if minutes[j] > m:
                return (h, minutes[j], seconds[0])
            k = bisect_left(seconds, s)
            if k < len(seconds):
                return (h, m, seconds[k])
            if j + 1 < len(minutes):
                return (h, minutes[j + 1], seconds[0])
        i += 1  # nothing left in this hour
        if i == len(hours):
            return None
    return (hours[i], minutes[0], seconds[0])


def _offset_at(instant: int, zone: tzinfo) -> int:
    return datetime.fromtimestamp(instant, zone).utcoffset() // _SECOND


def _wall_of(instant: int, zone: tzinfo) -> datetime:
    return datetime.fromtimestamp(instant, zone).replace(tzinfo=None)


def _first_change(first: int, last: int, zone: tzinfo, offset: int) -> int | None:
    """The first epoch second in [first, last] whose offset is not `offset` (that of
    `first`), or None.

    Probes a day apart: since 1900 no zone has changed its offset and changed it back within
    four days (tzdata), so no change slips between two probes.
    """
    low = first
    while low < last:
        high = min(low + _PROBE, last)
        if _offset_at(high, zone) != offset:
            while high - low > 1:  # offset(low) is `offset`, offset(high) is not
                middle = (low + high) // 2
                if _offset_at(middle, zone) == offset:
                    low = middle
                else:
                    high = middle
            return high
        low = high
    return None


def _instant_of(wall: datetime, zone: tzinfo) -> int | None:
    """The epoch second a fixed-time job fires for local `wall`; None if that day lost it."""
    instant = int(wall.replace(tzinfo=zone, fold=0).timestamp())  # the first occurrence
    if datetime.fromtimestamp(instant, zone).replace(tzinfo=None) == wall:
        return instant
    # `wall` is in a spring-forward gap: fire at the first real second after the gap, but
    # only on the same day (a day skipped whole, as in Samoa in 2011, fires nothing).
    instant = _gap_end(wall, zone)
    return instant if datetime.fromtimestamp(instant, zone).date() == wall.date() else None


def _gap_end(wall: datetime, zone: tzinfo) -> int:
    """The first real epoch second after the gap that holds the nonexistent `wall`."""
    # The two folds read `wall` with the offsets either side of the transition: one lands
    # before it, the other at or after it. Bisect between them on the offset.
    a = int(wall.replace(tzinfo=zone, fold=0).timestamp())
    b = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    low, high = min(a, b), max(a, b)
    before = datetime.fromtimestamp(low, zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high


@functools.lru_cache(maxsize=256)
def _static_offset(zone: tzinfo) -> int | None:
    """Seconds east of UTC if `zone` never changes its offset, else None."""
    if isinstance(zone, timezone):
        delta = zone.utcoffset(None)
        return None if delta is None else int(delta.total_seconds())
    if isinstance(zone, ZoneInfo) and zone.key in _UTC_KEYS:
        return 0
    return None


def parse_expression(text: object, field: str = "expression") -> Schedule:
    """A validated schedule; CronError naming `field` for anything that could not fire."""
    if not isinstance(text, str):
        raise CronError(f"{field}: must be a string")
    if len(text) > MAX_EXPRESSION_CHARS:  # before the cache, which keys on the text
        raise CronError(
            f"{field}: {MAX_EXPRESSION_CHARS} characters allowed at most, got {len(text)}"
        )
    try:
        return _compile(text)
    except _Rejected as exc:
        raise CronError(f"{field}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _compile(text: str) -> Schedule:
    if not _PRINTABLE.fullmatch(text):
        raise _Rejected("only printable ASCII characters are allowed")
    body = text.strip()
    if not body:
        raise _Rejected("must not be empty")
    if body.startswith("@"):
        if body.lower() not in MACROS:
            raise _Rejected(f"unknown macro {body!r}; known: {', '.join(MACROS)}")
        body = MACROS[body.lower()]
    given = body.split()
    if len(given) < 5:
        raise _Rejected(f"5 fields expected at least, got {len(given)}")
    if len(given) > 6:
        raise _Rejected(f"6 fields expected at most, got {len(given)}")
    if len(given) == 5:
        given.insert(0, "0")
    parts = _normalise(given)
    values = [_parse_field(i, part, given[i]) for i, part in enumerate(parts)]
    parts[_DOM] = _explicit_unless_star(parts[_DOM], values[_DOM], CronSim.LAST)
    parts[_DOW] = _explicit_unless_star(parts[_DOW], values[_DOW], CronSim.LAST)
    cron = " ".join(parts)
    try:
        search = CronSim(cron, _ANCHOR)
    except CronSimError:  # every field parsed: the day-of-month exists in none of the months
        raise _Rejected(
            f"can never fire: day-of-month {given[_DOM]!r} does not occur in month {given[4]!r}"
        ) from None
    state = dict(search.__dict__)
    try:
        next(search)
    except StopIteration:
        raise _Rejected("can never fire") from None
    fixed = all(
        "*" not in parts[i] and "/" not in parts[i] and len(values[i]) == 1 for i in range(3)
    )
    times = (tuple(sorted(values[2])), tuple(sorted(values[1])), tuple(sorted(values[0])))
    return Schedule(text=text, cron=cron, fixed_time=fixed, _state=state, _times=times)


def _normalise(given: list[str]) -> list[str]:
    """Upper case, croner's `?` and names replaced, unsupported croner syntax refused."""
    parts = [part.upper() for part in given]
    parts[_DOM] = parts[_DOM].replace("?", "*")
    parts[_DOW] = parts[_DOW].replace("?", "*")
    if parts[_DOW].startswith("+"):
        raise _Rejected("the '+' (day-of-month AND day-of-week) modifier is not supported")
    if "W" in parts[_DOM].replace("LW", ""):
        raise _Rejected(f"nearest weekday ('W') is not supported: {given[_DOM]!r}")
    for number, name in enumerate(_MONTHS, start=1):
        parts[4] = parts[4].replace(name, str(number))
    for name, number in _WEEKDAYS:
        parts[_DOW] = parts[_DOW].replace(name, number)
    return parts


def _parse_field(index: int, part: str, given: str) -> set:
    try:
        return Field(index).parse(part)
    except CronSimError:
        pass
    name = _FIELD_NAMES[index]
    low, high = _RANGES[index]
    for term in part.split(","):
        bounds = re.split(r"[/#]", term, maxsplit=1)[0].rstrip("LW").split("-")
        for bound in bounds:
            if bound.isdigit() and not low <= int(bound) <= high:
                raise _Rejected(f"{name} value {int(bound)} out of range {low}-{high}")
    raise _Rejected(f"invalid {name} field {given!r}")


def _explicit_unless_star(part: str, values: set, last: int) -> str:
    """Spell out a day field that starts with `*` but is not `*` (`*/2`, `*,5`).

    cronsim ANDs the day fields when either *starts* with `*`; croner only when one *is*
    `*`. Listing the values makes cronsim follow croner.
    """
    if part == "*" or not part.startswith("*"):
        return part
    terms = []
    for value in sorted(values, key=str):
        if isinstance(value, tuple):  # day-of-week: (day, nth) or (day, LAST)
            day, nth = value
            terms.append(f"{day}L" if nth == last else f"{day}#{nth}")
        elif value == CronSim.LAST:
            terms.append("L")
        elif value == CronSim.LAST_WEEKDAY:
            terms.append("LW")
        else:
            terms.append(str(value))
    return ",".join(terms)


def zone_named(name: object, field: str = "timezone") -> ZoneInfo:
    """The IANA zone `name`; CronError naming `field` if it is not one."""
    if not isinstance(name, str):
        raise CronError(f"{field}: must be a string")
    if len(name) > MAX_ZONE_CHARS:
        raise CronError(f"{field}: {MAX_ZONE_CHARS} characters allowed at most, got {len(name)}")
    try:
        return _zone(name)
    except _Rejected as exc:
        raise CronError(f"{field}: {exc}") from None


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    if not name:
        raise _Rejected("must not be empty")
    # Only relative names of plain components reach the file system: no "..", no absolute
    # path, no NUL (zoneinfo reads files under its search path and the tzdata package).
    if not _ZONE_NAME.fullmatch(name):
        raise _Rejected(f"not a time zone name: {name!r}")
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # not found, not a TZif file, a directory
        raise _Rejected(f"unknown time zone {name!r}") from None


@functools.cache
def local_zone() -> tzinfo:
    """The server's zone, DST-aware, computed once: a change of TZ needs a restart.

    TZ if it names a zone (or a zone file), else the zone /etc/localtime links to, else
    that file read as it is, else UTC.
    """
    return local_zone_from(os.environ.get("TZ"), Path("/etc/localtime"))


def local_zone_from(tz_env: str | None, localtime: Path) -> tzinfo:
    """local_zone() for a given TZ value and /etc/localtime path (tests use this too)."""
    if tz_env:
        spec = tz_env.removeprefix(":")  # POSIX: ":Area/City" is implementation-defined
        if spec.startswith("/"):
            zone = _zone_file(Path(spec))
            if zone is not None:
                return zone
        else:
            try:
                return _zone(spec)
            except _Rejected:
                pass  # a POSIX rule such as "UTC0": fall back to /etc/localtime
    target = os.path.realpath(localtime)
    marker = "/zoneinfo/"
    if marker in target:
        name = target.rsplit(marker, 1)[1].removeprefix("posix/")
        try:
            return _zone(name)
        except _Rejected:
            pass
    zone = _zone_file(localtime)
    return zone if zone is not None else UTC


def _zone_file(path: Path) -> ZoneInfo | None:
    try:
        with path.open("rb") as file:
            return ZoneInfo.from_file(file, key=path.name)
    except (OSError, ValueError):
        return None


def _fast_copy_works() -> bool:
    """Whether a CronSim can be cloned from a parsed one's attributes (cronsim 2.x)."""
    try:
        parsed = CronSim("0 */15 0-6 * * *", _ANCHOR)
        clone = CronSim.__new__(CronSim)
        clone.__dict__.update(parsed.__dict__)
        start = datetime(2024, 5, 6, 7, 8, 9)
        clone.dt = start
        return next(clone) == next(CronSim("0 */15 0-6 * * *", start))
    except Exception:  # any change in cronsim's internals: parse on every search instead
        return False


_FAST_COPY = _fast_copy_works()
