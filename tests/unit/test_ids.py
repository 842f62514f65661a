import scru128

from zizq.queue.ids import format_id, new_id
from zizq.queue.records import now_ms


def test_format_matches_library_and_ids_sort_in_creation_order():
    generator = scru128.Scru128Generator()
    for _ in range(2000):
        value = generator.generate()
        assert format_id(int(value)) == str(value)
    ids = [new_id(now_ms()) for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 25 and i.isalnum() and i.islower() or i.isdigit() for i in ids)


def _fields(job_id: str) -> tuple[int, int, int]:
    parsed = scru128.Scru128Id.from_str(job_id)
    return parsed.timestamp, parsed.counter_hi, parsed.counter_lo


def test_ids_are_valid_scru128_carrying_the_callers_timestamp():
    now = now_ms()
    ids = [new_id(now) for _ in range(1000)]
    assert {_fields(i)[0] for i in ids} == {now}
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert str(scru128.Scru128Id.from_str(ids[0])) == ids[0]


def test_a_small_clock_step_back_keeps_order_and_a_big_one_restarts():
    from zizq.queue import ids as ids_module

    gen = ids_module._Generator()
    start = 1_700_000_000_000
    first = format_id(gen.next_value(start))
    back = format_id(gen.next_value(start - 5_000))  # within the allowance: count on
    assert back > first and _fields(back)[0] == start
    restarted = format_id(gen.next_value(start - 60_000))  # beyond it: a new sequence
    assert _fields(restarted)[0] == start - 60_000


def test_counters_overflow_into_the_next_millisecond():
    from zizq.queue import ids as ids_module

    gen = ids_module._Generator()
    start = 1_700_000_000_000
    gen.next_value(start)
    gen.counter_lo = gen.counter_hi = (1 << 24) - 1
    before = format_id((gen.timestamp << 80) | ((1 << 24) - 1) << 56 | ((1 << 24) - 1) << 32)
    after = format_id(gen.next_value(start))
    assert after > before and _fields(after)[0] == start + 1


def test_out_of_range_timestamps_are_refused():
    import pytest

    from zizq.queue import ids as ids_module

    gen = ids_module._Generator()
    for bad in (0, -1, 1 << 48):
        with pytest.raises(ValueError):
            gen.next_value(bad)
