"""Zizq: a durable job queue server in one executable."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zizq")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
