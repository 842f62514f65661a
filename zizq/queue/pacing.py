"""How long work shares the event loop with requests."""

import asyncio

YIELD_S = 0.001  # pause between slices of long work


async def let_requests_in() -> None:
    """Pause a long task between slices so waiting requests are served.

    A real (if tiny) sleep, not sleep(0): measured with a 100,000-job bulk
    patch, sleep(0) let a /health request wait 835 ms, because Granian's
    hand-over of new requests is only picked up when the loop polls for I/O
    with nothing else ready; with a 1 ms sleep the worst wait was 33 ms.
    """
    await asyncio.sleep(YIELD_S)
