"""Start-up: rebuild the in-memory state from disk.

Jobs that were in flight when the server stopped (or crashed) go back to
ready with their attempts unchanged: their workers' connections are gone.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from zizq.logs import log_event
from zizq.queue.records import IN_FLIGHT, READY, SCHEDULED, TERMINAL
from zizq.store import IndexKey, Store, index_key_of

logger = logging.getLogger("zizq.engine")


@dataclass
class Recovered:
    ready: list[tuple[str, int, str]] = field(default_factory=list)  # (queue, priority, id)
    scheduled: list[tuple[int, str]] = field(default_factory=list)  # (ready_at, id)
    retained: list[tuple[int, str]] = field(default_factory=list)  # (purge_at, id)
    requeued: int = 0


def recover(store: Store) -> Recovered:
    """One pass over every job record; also sets the store's exact counters."""
    found = Recovered()
    counts: Counter[IndexKey] = Counter()
    requeue = store.batch()
    for job_id, record in store.iter_jobs():
        status = record["status"]
        counts[index_key_of(record)] += 1
        if status == IN_FLIGHT:
            previous = index_key_of(record)
            record["status"] = READY
            record.pop("dequeued_at", None)
            requeue.put_job(job_id, record, previous)
            found.requeued += 1
            status = READY
        if status == READY:
            found.ready.append((record["queue"], record["priority"], job_id))
        elif status == SCHEDULED:
            found.scheduled.append((record["ready_at"], job_id))
        elif status in TERMINAL and "purge_at" in record:
            found.retained.append((record["purge_at"], job_id))
    store.counts = counts
    if found.requeued:
        store.write(requeue, sync=True)
    log_event(
        logger,
        logging.INFO,
        "in-memory indexes rebuilt",
        ready=len(found.ready),
        scheduled=len(found.scheduled),
        in_flight_requeued=found.requeued,
        retained=len(found.retained),
    )
    return found
