#!/usr/bin/env bash
# Runs the GPU bundle built by scripts/gpu-bundle.sh on an x86-64 Linux machine with an
# NVIDIA GPU and driver (no Rust needed):
#   run.sh [OUTPUT_DIR]      (default ./gpu-results)
# Writes info.txt, tests.log, sanitizer.log, bench.log, bench.json, peers.json and
# summary.txt to OUTPUT_DIR, prints the summary table last, and exits non-zero if any test,
# sanitizer run or benchmark failed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-./gpu-results}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
cli="$here/bin/tilefuse"
# Sections run in pipelines (subshells), so failures are collected in a file.
failures="$(mktemp)"
trap 'rm -f "$failures"' EXIT
fail() { echo "$1" >>"$failures"; echo "FAILED: $1"; }
section() { printf '\n== %s\n' "$*"; }

# CUDA must run here; WGSL runs on the GPU through Vulkan when a loader is present.
export TILEFUSE_REQUIRE_CUDA_DEVICE=1
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  export WGPU_BACKEND=vulkan TILEFUSE_REQUIRE_WGPU=1
  if [[ -z "${VK_DRIVER_FILES:-}" && -f "$icd" ]]; then
    export VK_DRIVER_FILES="$icd"
  fi
  vulkan="Vulkan loader found: WGSL runs on the GPU through Vulkan"
else
  export TILEFUSE_BACKENDS=cpu,cuda
  vulkan="no Vulkan loader (libvulkan.so.1): WGSL runs skipped; see README, 'GPU bundle'"
fi

# --- the machine --------------------------------------------------------------------------
{
  section "GPU and driver"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    || echo "nvidia-smi failed"
  echo "$vulkan"
  section "tilefuse info"
  "$cli" info --ptxas || fail "tilefuse info"
} 2>&1 | tee "$out/info.txt"

# --- tests --------------------------------------------------------------------------------
{
  for test in "$here"/tests/*; do
    section "test $(basename "$test")"
    "$test" || fail "test $(basename "$test")"
  done
} 2>&1 | tee "$out/tests.log"

# --- compute-sanitizer on the CUDA tests ----------------------------------------------------
{
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      for test in "$here"/tests/*; do
        # CUDA tests have "cuda" in their names (cuda::<case> from on_backends!, cuda_*).
        "$test" --list 2>/dev/null | grep -q 'cuda.*: test$' || continue
        section "compute-sanitizer --tool $tool $(basename "$test") (tests named *cuda*)"
        TILEFUSE_BACKENDS=cpu,cuda compute-sanitizer --tool "$tool" --error-exitcode 3 \
          "$test" cuda --test-threads=1 \
          || fail "compute-sanitizer $tool $(basename "$test")"
      done
    done
  else
    fail "compute-sanitizer not found"
  fi
} 2>&1 | tee "$out/sanitizer.log"

# --- benchmarks ---------------------------------------------------------------------------
{
  section "criterion benches (each case run once, as a test)"
  for bench in "$here"/benches/*; do
    "$bench" --bench --test || fail "bench $(basename "$bench")"
  done
  section "tilefuse bench"
  "$cli" bench --json "$out/bench.json" || fail "tilefuse bench"
  section "peers (PyTorch, JAX)"
  PYTHONUNBUFFERED=1 python3 "$here/peers.py" --out "$out/peers.json" || fail "peers.py"
} 2>&1 | tee "$out/bench.log"

# --- summary, last --------------------------------------------------------------------------
{
  section "summary: tilefuse and peers, same run"
  inputs=()
  for f in "$out/bench.json" "$out/peers.json"; do [[ -f "$f" ]] && inputs+=("$f"); done
  ((${#inputs[@]})) && "$cli" summary "${inputs[@]}"
  if [[ -s "$failures" ]]; then
    sed 's/^/FAILED: /' "$failures"
  else
    echo "all tests, sanitizer runs and benchmarks passed"
  fi
} 2>&1 | tee "$out/summary.txt"
! [[ -s "$failures" ]]
