#!/usr/bin/env bash
# Builds what a GPU machine runs (x86-64 Linux with an NVIDIA driver, no Rust there) into
# target/gpu-bundle/: every integration-test executable, every bench executable and the CLI,
# stripped and packed in one tar.xz, with run.sh (from scripts/gpu-run.sh) and peers.py. Then, on the GPU
# machine:
#   target/gpu-bundle/run.sh OUTPUT_DIR
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ -z "${NVCC:-}" && -x .cuda/nvidia/cu13/bin/nvcc ]]; then
  export NVCC="$root/.cuda/nvidia/cu13/bin/nvcc"
fi
if [[ -z "${NVCC:-}" ]]; then
  echo "no NVCC: run scripts/install-nvcc.sh first (or set NVCC)" >&2
  exit 1
fi
# cudarc's bindings for the CUDA version of the kernels (13.0, what the GPU machines' driver
# runs). CUDARC_CUDA_VERSION also reruns cudarc's build script, which a PATH change does not.
export PATH="$(dirname "$NVCC"):$PATH"
export CUDARC_CUDA_VERSION=13000
export TILEFUSE_REQUIRE_CUDA=1
# The lent machines are H100 / H200: sm_90 SASS (and its PTX) alone keeps every executable's
# embedded kernels, and so the bundle, under the 64 MiB a device run may carry.
export TILEFUSE_CUDA_ARCHS="${TILEFUSE_CUDA_ARCHS:-90}"

bundle="$root/target/gpu-bundle"
rm -rf "$bundle"
mkdir -p "$bundle/tests" "$bundle/benches" "$bundle/bin"
messages="$root/target/gpu-bundle-artifacts.json"
cargo build --release --locked --features probes --tests --benches --bins --message-format=json-render-diagnostics >"$messages"

# tests/candle.rs on candle's CUDA device: candle builds its own kernels with the same nvcc
# (for CUDA_COMPUTE_CAP) and links CUDA's libraries directly (cudarc's dynamic-linking), which
# this machine lacks. The test executable is linked against stand-ins that carry the real
# libraries' names (scripts/cuda-link-stubs.py: a first link names the symbols it misses), and
# run.sh points the loader at the real ones on the GPU machine.
stubs="$root/target/cuda-link-stubs"
candle_messages="$root/target/gpu-bundle-candle.json"
rm -rf "$stubs"
python3 scripts/cuda-link-stubs.py "$stubs"
ln -s "$(dirname "$NVCC")/../lib/libcudart.so.13" "$stubs/libcudart.so"
candle_build() {
  # Without the default features: no CLI binary to link, and cudarc links no more than
  # candle asks for.
  CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" cargo rustc --release --locked --no-default-features \
    --features candle-cuda --test candle --message-format=json-render-diagnostics \
    -- -L "native=$stubs" >"$candle_messages"
}
candle_log="$root/target/gpu-bundle-candle.log"
until candle_build 2>"$candle_log"; do
  python3 scripts/cuda-link-stubs.py "$stubs" "$candle_log" || { cat "$candle_log" >&2; exit 1; }
done

# Each executable goes to tests/, benches/ or bin/ under its target name.
python3 - "$bundle" "$messages" "$candle_messages" <<'PY'
import json, shutil, sys
bundle, messages = sys.argv[1], sys.argv[2:]
for line in (line for path in messages for line in open(path)):
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    kinds, name, test = msg["target"]["kind"], msg["target"]["name"], msg["profile"]["test"]
    if "bench" in kinds:
        dest = f"benches/{name}"
    elif "test" in kinds:
        dest = f"tests/{name}"
    elif test:  # unit tests of the library or the CLI
        dest = f"tests/{name}-{kinds[0]}"
    else:
        dest = f"bin/{name}"
    shutil.copy(msg["executable"], f"{bundle}/{dest}")
PY
strip --strip-all "$bundle"/tests/* "$bundle"/benches/* "$bundle"/bin/*
ls -l "$bundle"/tests "$bundle"/benches "$bundle"/bin
# Every executable embeds every kernel, so they are packed together, in one xz stream whose
# dictionary spans them all (one thread: blocks compressed apart would not share it): the
# repeats cost almost nothing (2026-12-03: 473 MB of executables in 17 MB, where each one
# compressed alone came to 74 MB). run.sh unpacks it before running.
tar -C "$bundle" -cf - tests benches bin | xz -9e -T1 --lzma2=preset=9e,dict=512MiB >"$bundle/executables.tar.xz"
rm -r "$bundle/tests" "$bundle/benches" "$bundle/bin"
cp scripts/gpu-run.sh "$bundle/run.sh"
cp scripts/peers.py "$bundle/peers.py"
chmod +x "$bundle/run.sh"

size_mb=$(du -sm "$bundle" | cut -f1)
echo "bundle: $bundle (${size_mb} MB)"
if ((size_mb > 60)); then
  echo "the bundle is over 60 MB" >&2
  exit 1
fi
