#!/usr/bin/env bash
# Build llama.cpp's llama-bench and llama-quantize for the comparison in bench/latency.py, and
# llama-server for bench/serving.py, from the llama.cpp sources vendored in the PyPI sdist of
# llama-cpp-python (PyPI is the only network source here), and write an F32 copy of the default
# model (same weights as asl-serve computes with: it dequantises Q4_1 to float32 at load).
# llama-server is built without curl/OpenSSL (no model downloads, no TLS) and without fetching its
# Web UI (LLAMA_USE_PREBUILT_UI=OFF: the build would otherwise try a Hugging Face download).
#   bash bench/llamacpp.sh            -> bench/out/llama.cpp/build/bin/{llama-bench,llama-quantize,llama-server}
#                                        bench/out/SmolLM2-135M-Instruct.F32.gguf
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
OUT="$ROOT/bench/out"
SRC="$OUT/llama.cpp"
mkdir -p "$OUT"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  tmp=$(mktemp -d)
  "$ROOT/.venv/bin/pip" download --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$VERSION"
  tar xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
  mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC"
  rm -rf "$tmp"
fi
export CCACHE_BASEDIR="$SRC"
# AMX off by default: GGML_NATIVE turns it on where cpuid reports AMX, and ggml's runtime check
# (arch_prctl ARCH_REQ_XCOMP_PERM) passes on these VMs although the kernel does not support the
# tile data state (ARCH_GET_XCOMP_SUPP lacks XTILEDATA), so the first AMX matmul (a Q4_1 prefill)
# dies with SIGILL. LLAMA_AMX=ON keeps it on for hosts where AMX really works.
amx_flags=""
[ "${LLAMA_AMX:-OFF}" = ON ] || amx_flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DCMAKE_C_FLAGS="$amx_flags" -DCMAKE_CXX_FLAGS="$amx_flags" \
  "${launcher[@]}"
cmake --build "$SRC/build" -j "${JOBS:-$(nproc)}" --target llama-bench llama-quantize llama-server
F32="$OUT/SmolLM2-135M-Instruct.F32.gguf"
if [ ! -f "$F32" ]; then
  "$SRC/build/bin/llama-quantize" --allow-requantize "$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$F32" F32
fi
echo "llama-bench:  $SRC/build/bin/llama-bench"
echo "llama-server: $SRC/build/bin/llama-server"
echo "F32 model:   $F32"
