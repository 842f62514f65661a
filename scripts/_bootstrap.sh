# Sourced by the scripts in this folder: make sure .venv exists and holds the
# project (editable) with its dev tools. Re-installs only when pyproject changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "zizq needs Python 3.11 or newer (found $($PYTHON_BIN --version))" >&2; exit 1; }
  "$PYTHON_BIN" -m venv "$VENV"
fi
STAMP="$VENV/.zizq-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]"
  touch "$STAMP"
fi
