#!/usr/bin/env bash
# Cache llama.cpp's own HF -> GGUF converter for `distilforge export --format gguf`.
#
# Why from the llama-cpp-python sdist: it vendors the llama.cpp tree the embedded server is built
# from (vendor/llama.cpp/), so the converter and its gguf-py writer are pinned to exactly the
# revision that will load the file. Nothing else is downloaded: the sdist comes from PyPI into the
# wheels cache once; convert_hf_to_gguf.py, its conversion/ package and gguf-py/ are extracted into
# $DISTILFORGE_CACHE/converter/llama.cpp-<version>/ (temp folder + rename, so a half extract is
# never used). Idempotent: a second run returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DISTILFORGE_CACHE:-$HOME/.cache/distilforge}"
WHEELS="$CACHE/wheels"
VER="${LLAMA_VER:-0.3.36}"
DEST="$CACHE/converter/llama.cpp-$VER"
PIP="${PIP:-.venv/bin/pip}"

# The converter's one import the main stack lacks: Llama-family models try a sentencepiece
# tokenizer first (and fall back to tokenizer.json only when sentencepiece says "no such file").
PYBIN="$(dirname "$PIP")/python"
if [ -x "$PYBIN" ] && ! "$PYBIN" -c "import sentencepiece" 2>/dev/null; then
  "$PIP" install -q "sentencepiece==0.2.3"
fi
if [ -f "$DEST/convert_hf_to_gguf.py" ] && [ -f "$DEST/conversion/__init__.py" ] && [ -f "$DEST/gguf-py/gguf/__init__.py" ]; then
  exit 0
fi
mkdir -p "$WHEELS" "$CACHE/converter"
SDIST="$WHEELS/llama_cpp_python-$VER.tar.gz"
if [ ! -f "$SDIST" ]; then
  echo "setup: caching the llama-cpp-python $VER sdist (for llama.cpp's GGUF converter)"
  "$PIP" download -q --no-deps --no-binary :all: -d "$WHEELS" "llama-cpp-python==$VER"
fi
TOP="llama_cpp_python-$VER/vendor/llama.cpp"
TMP=$(mktemp -d "$CACHE/converter/.extract.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
GIT="llama_cpp_python-$VER/.git/modules/vendor/llama.cpp/HEAD"
tar -xzf "$SDIST" -C "$TMP" "$TOP/convert_hf_to_gguf.py" "$TOP/conversion" "$TOP/gguf-py" "$GIT"
mkdir -p "$TMP/out"
mv "$TMP/$TOP/convert_hf_to_gguf.py" "$TMP/$TOP/conversion" "$TMP/$TOP/gguf-py" "$TMP/out/"
# what the export records: package version, llama.cpp commit, sdist sha256
printf 'llama-cpp-python %s\nllama.cpp %s\nsdist-sha256 %s\n' "$VER" "$(cat "$TMP/$GIT")" \
  "$(sha256sum "$SDIST" | cut -c1-64)" > "$TMP/out/SOURCE"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
echo "setup: GGUF converter cached in $DEST"
