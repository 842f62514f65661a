# shellcheck shell=bash disable=SC2034 # (sets variables for the scripts that source it)
# Sourced by scripts/build and scripts/test-binary: set up .venv (scripts/_bootstrap.sh)
# and name the platform. Sets ROOT, VENV, PY (the venv's python), EXE (".exe" on
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

# shellcheck source=scripts/_bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
if [ "$ZIZQ_OS" = windows ]; then EXE=.exe; else EXE=; fi
export ZIZQ_OS ZIZQ_ARCH
