"""Entry script of the frozen `zizq` executable (PyInstaller runs it as `__main__`).

It behaves like `python -m zizq`, plus three things only a one-file executable needs:

* Tie the server to the bootloader. A one-file executable is two processes: the bootloader
  unpacks the bundle to a temporary directory and runs the real program as its child. It
  forwards SIGTERM/SIGINT, but `kill -9` (or TerminateProcess on Windows) of the bootloader
  would leave the server running as an orphan, still holding the port and the store lock.
  So the child dies with its parent, as abruptly as the parent did.
* `zizq --zizq-jq-worker <memory limit>` (hidden; zizq.queue.jq_sandbox.WORKER_FLAG) runs a
  jq worker process: the server starts its jq sandbox's workers by running its own
  executable this way. It is dispatched before anything else is imported, and runs the
  worker module bundled as the top-level `zizq_jq_worker` (a copy of
  zizq/queue/jq_worker.py, see specs/zizq.spec), so a worker loads neither the server
  nor the `zizq` package: only jq and msgpack.
* `ZIZQ_BUNDLE_CHECK=1 zizq` imports every module the spec bundled on purpose (the manifest
  written by specs/zizq.spec) and exercises the native ones, then exits: scripts/test-binary
  uses it to prove the bundle is complete for features the e2e suite does not reach yet.
"""

import os
import sys
import threading


def _is_onefile_child() -> bool:
    meipass = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or meipass is None:
        return False
    # One-file unpacks to a temporary directory; one-dir keeps the bundle beside the exe.
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    return not os.path.realpath(meipass).startswith(exe_dir + os.sep)


def _die_with_parent() -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(137)
    elif sys.platform == "darwin":
        import contextlib
        import select

        def watch() -> None:
            kq = select.kqueue()
            event = select.kevent(
                parent,
                filter=select.KQ_FILTER_PROC,
                flags=select.KQ_EV_ADD | select.KQ_EV_ENABLE | select.KQ_EV_ONESHOT,
                fflags=select.KQ_NOTE_EXIT,
            )
            with contextlib.suppress(ProcessLookupError):  # already gone
                kq.control([event], 1, None)
            os._exit(137)

        threading.Thread(target=watch, name="zizq-parent-watch", daemon=True).start()
    elif sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.OpenProcess.restype = ctypes.c_void_p
        synchronize, infinite = 0x00100000, 0xFFFFFFFF
        handle = kernel32.OpenProcess(synchronize, False, parent)
        if not handle:
            return

        def wait() -> None:
            kernel32.WaitForSingleObject(ctypes.c_void_p(handle), infinite)
            os._exit(1)

        threading.Thread(target=wait, name="zizq-parent-watch", daemon=True).start()


def _bundle_check() -> int:
    """Import what the spec bundled on purpose and use the native parts once."""
    import importlib
    import tempfile

    manifest = os.path.join(sys._MEIPASS, "zizq_bundle_manifest.txt")
    with open(manifest, encoding="utf-8") as fh:
        names = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
    failed = 0
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed += 1
            print(f"FAIL import {name}: {exc!r}")
    checks = {
        "zoneinfo from bundled tzdata": _check_zoneinfo,
        "rocksdict open/put/get": lambda: _check_rocksdict(tempfile.mkdtemp()),
        "jq compile/run": lambda: (
            __import__("jq").compile(".a + 1").input_value({"a": 1}).first() == 2
        ),
        "msgpack C extension": lambda: (
            __import__("msgpack").Packer.__module__ == "msgpack._cmsgpack"
        ),
        "orjson": lambda: __import__("orjson").dumps({"a": 1}) == b'{"a":1}',
        "jq worker process (empty $ENV)": _check_jq_worker,
        "nacl ed25519 sign/verify": _check_nacl,
        "package metadata": lambda: bool(__import__("importlib.metadata").metadata.version("zizq")),
    }
    for label, check in checks.items():
        try:
            ok = check()
        except Exception as exc:
            ok, label = False, f"{label}: {exc!r}"
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {label}")
    print(f"bundle check: {len(names)} modules, {'ok' if not failed else f'{failed} failed'}")
    return 1 if failed else 0


def _check_jq_worker() -> bool:
    from zizq.queue.jq_sandbox import JqSandbox

    sandbox = JqSandbox(workers=1)
    try:
        return sandbox.evaluate(".a + 1, $ENV", {"a": 1}) == [2, {}]
    finally:
        sandbox.close()


def _check_zoneinfo() -> bool:
    import zoneinfo

    zoneinfo.reset_tzpath(to=[])  # ignore the system zone files: only the bundle counts
    return zoneinfo.ZoneInfo("America/New_York").key == "America/New_York"


def _check_rocksdict(path: str) -> bool:
    import shutil

    import rocksdict

    db = rocksdict.Rdict(os.path.join(path, "db"))
    try:
        db[b"k"] = b"v"
        return db[b"k"] == b"v"
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)


def _check_nacl() -> bool:
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    return key.verify_key.verify(key.sign(b"zizq")) == b"zizq"


def _add_zipped_packages() -> None:
    """Packages the spec bundled as zips (ZIPPED_PACKAGES) import from those zips."""
    import glob

    sys.path.extend(sorted(glob.glob(os.path.join(sys._MEIPASS, "zipped", "*.zip"))))


def main() -> None:
    if _is_onefile_child():
        _die_with_parent()
    if getattr(sys, "frozen", False):
        _add_zipped_packages()
    if os.environ.get("ZIZQ_BUNDLE_CHECK") == "1":
        sys.exit(_bundle_check())
    from zizq.cli import main as zizq_main

    zizq_main(prog_name="zizq")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zizq-jq-worker"]:
        import zizq_jq_worker

        sys.exit(zizq_jq_worker.main(sys.argv[2:]))
    import multiprocessing

    multiprocessing.freeze_support()
    main()
