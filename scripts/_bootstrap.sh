# shellcheck shell=bash disable=SC2034 # (sets variables for the scripts that source it)
# Sourced by the scripts in this folder: make sure .venv exists and holds the project
# (editable) with its dev tools; re-installs only when pyproject.toml changes.
# Sets ROOT, VENV, VENV_BIN (the venv's executables: bin/, or Scripts/ on Windows) and PY.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
case "$(uname -s)" in
  MINGW* | MSYS* | CYGWIN*) VENV_BIN="$VENV/Scripts"; PY="$VENV_BIN/python.exe"; PYTHON_BIN="${PYTHON:-python}" ;;
  *) VENV_BIN="$VENV/bin"; PY="$VENV_BIN/python"; PYTHON_BIN="${PYTHON:-python3}" ;;
esac
if [ ! -x "$PY" ]; then
  "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "zizq needs Python 3.11 or newer (found $($PYTHON_BIN --version))" >&2; exit 1; }
  "$PYTHON_BIN" -m venv "$VENV"
fi
STAMP="$VENV/.zizq-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -e "${ROOT}[dev]"
  touch "$STAMP"
fi
