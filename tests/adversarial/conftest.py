"""Standing adversarial suite: each test attacks a real `zizq serve` subprocess.

The fixtures are the end-to-end suite's (fresh root dir per test, every server
stopped at teardown); helpers shared by several attack modules live in
`tests/adversarial/helpers.py`.
"""

from tests.e2e.conftest import api, protocol, server, start_server  # noqa: F401
