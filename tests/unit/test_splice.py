"""MessagePack take frames carry the stored payload bytes as they are, and decode the same."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zizq.api.splice import job_with_stored_payload

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
payloads = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=30,
)
# Views of 0 to 20 fields: across the fixmap (15 entries) and map16 boundary.
views = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda key: key != "payload"),
    _scalars,
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(view=views, value=payloads)
def test_the_spliced_frame_is_the_packed_job(view, value):
    stored = msgpack.packb(value)
    spliced = job_with_stored_payload(view, stored)
    assert spliced == msgpack.packb({**view, "payload": value})
    assert msgpack.unpackb(spliced, strict_map_key=False) == {**view, "payload": value}


def test_a_missing_payload_is_nil_and_a_big_view_gets_a_map32_header():
    assert msgpack.unpackb(job_with_stored_payload({"id": "x"}, None)) == {
        "id": "x",
        "payload": None,
    }
    wide = {f"k{i}": i for i in range(70_000)}  # past map16
    spliced = job_with_stored_payload(wide, msgpack.packb([1]))
    assert spliced[0] == 0xDF and msgpack.unpackb(spliced) == {**wide, "payload": [1]}


def test_a_view_that_has_a_payload_already_is_refused():
    with pytest.raises(ValueError):
        job_with_stored_payload({"payload": 1}, msgpack.packb(2))


@pytest.mark.parametrize(
    "stored",
    [
        b"\x92\x01",  # an array of 2 holding 1 element
        msgpack.packb(list(range(100)))[:-1],  # cut short, past the unpack-check size
        msgpack.packb({"n": 1}) + b"\x01",  # a second value after the first
        msgpack.packb(list(range(100))) + b"\x01",
        b"\xc1" * 100,  # a byte MessagePack never uses
    ],
)
def test_damaged_stored_bytes_are_refused_not_sent(stored):
    with pytest.raises(ValueError, match="cannot be read"):
        job_with_stored_payload({"id": "x"}, stored)
