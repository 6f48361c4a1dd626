#!/usr/bin/env bash
# Install Debian chromium for the UI tests (playwright drives it with executable_path; it cannot
# download its own browsers here) and the playwright Python package into the main venv.
# Idempotent: does nothing when both are present.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
chromium --version

if [[ -x "$PY" ]] && ! "$PY" -c "import playwright" 2>/dev/null; then
  "$PY" -m pip install --quiet --disable-pip-version-check "playwright>=1.40"
fi
