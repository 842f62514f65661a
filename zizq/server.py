"""`zizq serve`: open the store, start the engine, serve both listeners,
and shut everything down cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys

from zizq import __version__
from zizq.api.app import create_admin_app, create_primary_app
from zizq.config import ServeConfig
from zizq.listener import Listener
from zizq.logs import configure_logging, log_event
from zizq.queue import Engine, EngineSettings
from zizq.queue.maintenance import Maintenance
from zizq.store import SchemaVersionError, Store, StoreLockedError

logger = logging.getLogger("zizq.server")

SHUTDOWN_GRACE_S = 3.0


def _announce(api: str, address: tuple[str, int]) -> None:
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log_event(logger, logging.INFO, f"{api} API listening", api=api, addr=shown, scheme="http")
    print(f"Listening on http://{shown} ({api})", flush=True)


async def serve(config: ServeConfig) -> int:
    try:
        store = Store(config.root_dir, config.cache_size)
    except (StoreLockedError, SchemaVersionError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    log_event(logger, logging.INFO, "store opened", root_dir=str(config.root_dir))
    engine = Engine(store, EngineSettings.from_config(config))
    maintenance = Maintenance(store, __version__)
    maintenance.remove_stale_backups()  # left behind if a previous server died mid-backup
    engine.maintenance = maintenance
    listeners: list[Listener] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Windows has no add_signal_handler; KeyboardInterrupt still stops us there.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await engine.start()
        # The rebuilt indexes are long-lived: keep the cyclic GC from re-scanning
        # them, and let it run less often (requests allocate many short-lived dicts).
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        if config.admin_enabled:
            admin = Listener(
                create_admin_app(maintenance, __version__), config.admin_host, config.admin_port
            )
            listeners.append(admin)
            _announce("admin", await admin.start())
        primary = Listener(create_primary_app(engine, __version__), config.host, config.port)
        listeners.append(primary)
        _announce("primary", await primary.start())
        await stop.wait()
        log_event(logger, logging.INFO, "shutting down")
    except OSError as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        # Streams end first (their jobs go back to ready), then the listeners, then the store.
        await engine.stop()
        await asyncio.gather(*(listener.stop(SHUTDOWN_GRACE_S) for listener in listeners))
        store.close()
        log_event(logger, logging.INFO, "store closed")
    return 0


def run(config: ServeConfig) -> int:
    configure_logging(config)
    print(f"Zizq {__version__}", flush=True)
    try:
        import uvloop
    except ImportError:  # Windows has no uvloop; the default loop works, only slower
        return asyncio.run(serve(config))
    return uvloop.run(serve(config))
