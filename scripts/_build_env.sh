# shellcheck shell=bash disable=SC2034 # (sets variables for the scripts that source it)
# Sourced by scripts/build and scripts/test-binary: set up .venv like scripts/_bootstrap.sh
# does, and name the platform. Sets ROOT, VENV, PY (the venv's python), EXE (".exe" on
# Windows, else empty), ZIZQ_OS (linux|macos|windows) and ZIZQ_ARCH (x86_64|aarch64|arm64).
set -euo pipefail

case "$(uname -s)" in
  Linux*) ZIZQ_OS=linux ;;
  Darwin*) ZIZQ_OS=macos ;;
  MINGW* | MSYS* | CYGWIN*) ZIZQ_OS=windows ;;
  *) echo "unsupported OS: $(uname -s)" >&2; exit 1 ;;
esac
case "$(uname -m)" in
  x86_64 | amd64 | AMD64) ZIZQ_ARCH=x86_64 ;;
  aarch64) ZIZQ_ARCH=aarch64 ;; # Linux on 64-bit ARM
  arm64) ZIZQ_ARCH=arm64 ;;     # macOS on Apple silicon
  *) echo "unsupported architecture: $(uname -m)" >&2; exit 1 ;;
esac

if [ "$ZIZQ_OS" = windows ]; then
  # scripts/_bootstrap.sh assumes .venv/bin; a Windows venv has .venv/Scripts. Same steps.
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  VENV="$ROOT/.venv"
  EXE=.exe
  PY="$VENV/Scripts/python.exe"
  if [ ! -x "$PY" ]; then
    "${PYTHON:-python}" -m venv "$VENV"
  fi
  STAMP="$VENV/.zizq-installed"
  if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e "${ROOT}[dev]"
    touch "$STAMP"
  fi
else
  # shellcheck source=scripts/_bootstrap.sh
  source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
  EXE=
  PY="$VENV/bin/python"
fi
export ZIZQ_OS ZIZQ_ARCH
