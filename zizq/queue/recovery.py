"""Start-up: rebuild the in-memory state from disk.

Jobs that were in flight when the server stopped (or crashed) go back to
ready with their attempts unchanged: their workers' connections are gone.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from zizq.logs import log_event
from zizq.queue import unique
from zizq.queue.records import IN_FLIGHT, READY, SCHEDULED, TERMINAL, now_ms
from zizq.store import IndexKey, Store, index_key_of, layout

logger = logging.getLogger("zizq.engine")


@dataclass
class Recovered:
    # queue -> [(priority, id)], the ready index's own heaps once heapified: one small
    # tuple per ready job and one string per queue (10 M jobs must fit in memory).
    ready: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    scheduled: list[tuple[int, str]] = field(default_factory=list)  # (ready_at, id)
    retained: list[tuple[int, str]] = field(default_factory=list)  # (purge_at, id)
    requeued: int = 0
    keys_repaired: int = 0  # unique/batch index entries added or removed at start
    # (budget, cost, unfinished jobs drawing that cost on it): from the scan, or as the
    # start-up index saved them (BudgetBook.cost_rows)
    costs: list[tuple[str, int, int]] = field(default_factory=list)


def recover(store: Store) -> Recovered:
    """One pass over every job record; also sets the store's exact counters."""
    found = Recovered()
    counts: Counter[IndexKey] = Counter()
    draws: Counter[tuple[str, int]] = Counter()
    requeue = store.batch()
    now = now_ms()
    ready = found.ready
    for job_id, record in store.iter_jobs():
        status = record["status"]
        if "unique_key" in record and unique.holds_key(record, now):
            # A holder whose index entry is missing (a store from before unique jobs were
            # indexed, or damage) takes its key again, unless another job has it.
            key = unique.index_key(record["unique_key"])
            if store.get_keyed(key) is None:
                requeue.put_keyed(key, job_id)
                found.keys_repaired += 1
        counts[index_key_of(record)] += 1
        if status == IN_FLIGHT:
            previous = index_key_of(record)
            record["status"] = READY
            record.pop("dequeued_at", None)
            requeue.put_job(job_id, record, previous)
            found.requeued += 1
            status = READY
        if "budgets" in record and status not in TERMINAL:
            for binding in record["budgets"]:
                draws[binding["key"], binding["cost"]] += 1
        if status == READY:
            heap = ready.get(record["queue"])
            if heap is None:
                heap = ready[record["queue"]] = []
            heap.append((record["priority"], job_id))
        elif status == SCHEDULED:
            found.scheduled.append((record["ready_at"], job_id))
        elif status in TERMINAL and "purge_at" in record:
            found.retained.append((record["purge_at"], job_id))
    store.counts = counts
    found.costs = [(key, cost, jobs) for (key, cost), jobs in draws.items()]
    found.keys_repaired += _drop_dangling_keys(store, requeue)
    if found.requeued or found.keys_repaired:
        store.write(requeue, sync=True)
    log_event(
        logger,
        logging.INFO,
        "in-memory indexes rebuilt",
        ready=sum(len(heap) for heap in ready.values()),
        scheduled=len(found.scheduled),
        in_flight_requeued=found.requeued,
        retained=len(found.retained),
        keys_repaired=found.keys_repaired,
    )
    return found


def _drop_dangling_keys(store: Store, batch) -> int:
    """Unique and batch index entries pointing at jobs that no longer exist are removed.

    Every write keeps the entries exact, so this finds nothing on a healthy
    store; it makes sure a damaged one cannot keep a key taken by a ghost.
    """
    dropped = 0
    for tag in (layout.INDEX_UNIQUE, layout.INDEX_BATCH):
        for key, job_id in store.iter_keyed(tag):
            if store.get_job(job_id) is None:
                batch.delete_keyed(key)
                dropped += 1
    return dropped
