"""`zizq serve`: open the store, start the engine, serve both listeners,
and shut everything down cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from zizq import __version__
from zizq.api.app import create_admin_app, create_primary_app
from zizq.config import ServeConfig
from zizq.connections import ConnectionTracker
from zizq.license import (
    Feature,
    License,
    LicenseError,
    LicenseRequired,
    LicenseState,
    LicenseWatcher,
    issuer_fingerprint,
    key_path,
    log_license,
    read_key_file,
    trusted_issuer_key,
    verify_license,
)
from zizq.listener import Listener, ListenError, connection_limits, raise_open_file_limit
from zizq.logs import configure_logging, effective_log_format, is_terminal, log_event
from zizq.queue import Engine, EngineSettings
from zizq.queue.maintenance import Maintenance
from zizq.store import Store, StoreError

if TYPE_CHECKING:  # zizq.tls loads `cryptography`: imported only when TLS is configured
    from zizq.tls import TlsFiles

logger = logging.getLogger("zizq.server")

SHUTDOWN_GRACE_S = 3.0


def _announce(api: str, address: tuple[str, int], scheme: str = "http") -> None:
    """The listener's log line (scripts read its port there) and the human line on stderr.

    The human lines go to stderr so that stdout carries log records only: with
    `--log-format json` every stdout line is one JSON object.
    """
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log_event(logger, logging.INFO, f"{api} API listening", api=api, addr=shown, scheme=scheme)
    print(f"Listening on {scheme}://{shown} ({api})", file=sys.stderr, flush=True)


def _tls_settings(config: ServeConfig, license_state: LicenseState) -> dict[str, TlsFiles | None]:
    """Each listener's checked TLS files (None = plain HTTP), or StartupError naming the flag.

    Checked before the store is opened, so a bad certificate changes nothing on disk. Mutual
    TLS is checked against the license once, here: a listener keeps requiring client
    certificates if the license expires later (turning that off would open the port).
    """
    given = {
        "primary": (config.tls_cert, config.tls_key, config.tls_client_ca, "--"),
        "admin": (
            config.admin_tls_cert,
            config.admin_tls_key,
            config.admin_tls_client_ca,
            "--admin-",
        ),
    }
    if not config.admin_enabled:
        del given["admin"]
    if all(value is None for *paths, _prefix in given.values() for value in paths):
        return {}
    # Only now: `cryptography` adds a tenth of a second to the start of every plain server.
    from zizq.tls import TlsError, check_listener_files, listener_files

    settings: dict[str, TlsFiles | None] = {}
    for api, (cert, key, client_ca, prefix) in given.items():
        try:
            files = listener_files(cert, key, client_ca, prefix)
            if files is not None and files.client_ca is not None:
                try:
                    license_state.require(Feature.MUTUAL_TLS)
                except LicenseRequired as exc:
                    raise StartupError(
                        f"cannot enable mutual TLS ({prefix}tls-client-ca): {exc}"
                    ) from None
            if files is not None:
                check_listener_files(files, prefix)
        except TlsError as exc:
            raise StartupError(str(exc)) from None
        settings[api] = files
    return settings


def _load_license(config: ServeConfig) -> tuple[License | None, str | None]:
    """The license `--license-key` names and its token, logged; StartupError if unusable."""
    if config.license_key is None:
        log_license(None)
        return None, None
    path = key_path(config.license_key)
    try:
        token = read_key_file(path) if path is not None else config.license_key
        found = verify_license(token)
    except LicenseError as exc:
        raise StartupError(f"--license-key: {exc}") from None
    log_license(found)
    return found, token


def _license_watcher(
    config: ServeConfig, state: LicenseState, token: str | None
) -> LicenseWatcher | None:
    """A watcher for `--license-key @path` (a raw token cannot change without a restart)."""
    path = key_path(config.license_key) if config.license_key is not None else None
    if path is None or token is None or config.license_key_check_interval_ms <= 0:
        return None
    return LicenseWatcher(state, path, config.license_key_check_interval_ms, token)


def _log_startup(config: ServeConfig, license_state: LicenseState) -> None:
    """The effective configuration, once, before the store is opened."""
    backoff = config.default_backoff
    log_event(
        logger,
        logging.INFO,
        "configuration",
        version=__version__,
        tier=str(license_state.tier()),
        license_issuer=issuer_fingerprint(trusted_issuer_key()),
        root_dir=str(config.root_dir),
        default_commit_mode=config.default_commit_mode,
        enqueue_commit_mode=config.enqueue_commit_mode,
        global_in_flight_limit=config.global_in_flight_limit,
        default_retry_limit=config.default_retry_limit,
        default_backoff_base_ms=backoff.base_ms,
        default_backoff_exponent=backoff.exponent,
        default_backoff_jitter_ms=backoff.jitter_ms,
        completed_retention_ms=config.default_completed_retention_ms,
        dead_retention_ms=config.default_dead_retention_ms,
        heartbeat_interval_ms=config.heartbeat_interval_ms,
        idle_timeout_ms=config.idle_timeout_ms,
        reaper_check_interval_ms=config.reaper_check_interval_ms,
        cache_size=config.cache_size,
        jq_time_limit_ms=config.jq_time_limit_ms,
        jq_memory_limit=config.jq_memory_limit,
        auto_compact_threshold=config.auto_compact_threshold,
        admin_api=config.admin_enabled,
        log_format=effective_log_format(config),
        log_level=config.log_level,
        log_dir=str(config.log_dir) if config.log_dir is not None else "stdout",
    )


class StartupError(Exception):
    """A mistake in how the server was started; the message is one line for the user."""


def _fail(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    return 1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check_writable_dir(path: Path, flag: str) -> None:
    """Create `path` if needed and prove we can write in it, or raise `StartupError`.

    Tried with a real file, not os.access: root passes mode-bit checks, and a read-only
    mount or a full disk shows only when writing.
    """
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".zizq-write-test-"):
            pass
    except (OSError, ValueError) as exc:
        raise StartupError(
            f"{flag} {str(path)!r} is not a writable directory: {_reason(exc)}"
        ) from None


def _open_store(config: ServeConfig) -> Store:
    check_writable_dir(config.root_dir, "--root-dir")
    try:
        return Store(config.root_dir, config.cache_size)
    except Exception as exc:  # RocksDB reports its failures as a bare Exception
        raise StartupError(
            f"cannot open the store in {str(config.root_dir)!r}: {_reason(exc)}"
        ) from None


async def serve(config: ServeConfig, license_state: LicenseState, token: str | None) -> int:
    try:
        tls = _tls_settings(config, license_state)
        store = _open_store(config)
    except StartupError as exc:
        return _fail(str(exc))
    log_event(logger, logging.INFO, "store opened", root_dir=str(config.root_dir))
    license_state.start()  # logs the moment the license expires
    watcher = _license_watcher(config, license_state, token)
    if watcher is not None:
        watcher.start()
    engine = Engine(store, EngineSettings.from_config(config), license_state)
    maintenance = Maintenance(store, __version__, config.auto_compact_threshold)
    maintenance.remove_stale_backups()  # left behind if a previous server died mid-backup
    engine.maintenance = maintenance
    maintenance.watch_store()  # a failed write (disk full) is retried until writes land
    listeners: list[Listener] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Windows has no add_signal_handler; KeyboardInterrupt still stops us there.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    primary_slots, admin_slots = connection_limits(raise_open_file_limit())
    idle_timeout_s = config.idle_timeout_ms / 1000
    engine_started = False
    try:
        # Bind both sockets before anything else, so that a busy port or a bad address
        # stops us before the indexes are rebuilt or a single request is served.
        def listener(api: str, make_app, host: str, port: int, slots: int) -> Listener:
            tracker = ConnectionTracker()  # the app and the idle reaper share it
            made = Listener(
                make_app(tracker),
                host,
                port,
                api=api,
                idle_timeout_s=idle_timeout_s,
                max_connections=slots,
                tracker=tracker,
                tls=tls.get(api),
                websockets=api == "admin",  # GET /events (zizq top)
            )
            listeners.append(made)
            return made

        admin: Listener | None = None
        if config.admin_enabled:
            admin = listener(
                "admin",
                lambda t: create_admin_app(maintenance, __version__, t, engine),
                config.admin_host,
                config.admin_port,
                admin_slots,
            )
        primary = listener(
            "primary",
            lambda t: create_primary_app(engine, __version__, t),
            config.host,
            config.port,
            primary_slots,
        )
        engine_started = True
        await engine.start()
        # The rebuilt indexes are long-lived: keep the cyclic GC from re-scanning
        # them, and let it run less often (requests allocate many short-lived dicts).
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        if admin is not None:
            _announce("admin", await admin.start(), admin.scheme)
        _announce("primary", await primary.start(), primary.scheme)
        await stop.wait()
        log_event(logger, logging.INFO, "shutting down")
    except ListenError as exc:
        return _fail(str(exc))
    except StoreError as exc:  # e.g. the start-up requeue of in-flight jobs on a full disk
        return _fail(f"cannot start on the store in '{config.root_dir}': {exc}")
    finally:
        # Streams end first (their jobs go back to ready), then the listeners, then the store.
        if watcher is not None:
            await watcher.stop()
        license_state.stop()
        if engine_started:
            await engine.stop()
        await asyncio.gather(*(listener.stop(SHUTDOWN_GRACE_S) for listener in listeners))
        maintenance.close()  # streaming backups end; their threads must not hold the exit
        if engine_started:
            engine.save_startup_index()  # the next start reads it instead of every job
        store.close()
        log_event(logger, logging.INFO, "store closed")
    return 0


def run(config: ServeConfig) -> int:
    # The banner is for a human watching a terminal (as in the reference); in a pipe,
    # stderr stays one `Error: ...` line when start-up fails. stdout is for log records.
    if is_terminal(sys.stderr):
        print(f"Zizq {__version__}", file=sys.stderr, flush=True)
    try:
        configure_logging(config)
    except OSError as exc:
        flag = "--log-to-disk" if config.log_dir == config.root_dir / "log" else "--log-dir"
        return _fail(f"{flag} {str(config.log_dir)!r} is not writable: {_reason(exc)}")
    try:
        found, token = _load_license(config)
    except StartupError as exc:
        return _fail(str(exc))
    license_state = LicenseState(found)
    _log_startup(config, license_state)
    try:
        import uvloop
    except ImportError:  # Windows has no uvloop; the default loop works, only slower
        code = asyncio.run(serve(config, license_state, token))
    else:
        code = uvloop.run(serve(config, license_state, token))
    if code == 0:
        print("Server stopped.", file=sys.stderr, flush=True)
    return code
