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
