#!/usr/bin/env bash
# Runs the GPU bundle built by scripts/gpu-bundle.sh on an x86-64 Linux machine with an
# NVIDIA GPU and driver (no Rust needed):
#   run.sh [OUTPUT_DIR]      (default ./gpu-results)
#   TILEFUSE_OPS=copy,scan run.sh ...   benchmarks (criterion, tilefuse bench, peers) of
#                                        these ops only; every test still runs
#   TILEFUSE_SECTIONS=bench run.sh ...  these sections only (info, tests, sanitizer, bench;
#                                        default all): a second, shorter run of a session
#                                        whose device time is short; the summary always prints
# Writes info.txt, tests.log (tests, the CLI on NumPy case files, tilefuse profile under
# ncu and nsys), sanitizer.log, bench.log, bench.json, peers.json, summary.txt and
# roofline.svg to OUTPUT_DIR, prints the summary table last, and exits non-zero if any test,
# sanitizer run or benchmark failed.
set -uo pipefail

sections="${TILEFUSE_SECTIONS:-info,tests,sanitizer,bench}"
[[ -n "${sections//,/}" ]] || { echo "TILEFUSE_SECTIONS names no section"; exit 2; }
for part in ${sections//,/ }; do
  [[ ",info,tests,sanitizer,bench," == *",$part,"* ]] || { echo "unknown section $part in TILEFUSE_SECTIONS"; exit 2; }
done
wanted() { [[ ",$sections," == *",$1,"* ]]; }

bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-./gpu-results}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
# Sections run in pipelines (subshells), so failures are collected in a file.
failures="$(mktemp)"
# The executables travel in one tar.xz (tests/, benches/, bin/); unpack it into a scratch
# directory (with Python's tarfile and lzma, which every machine with the peers' PyTorch has,
# xz or not).
here="$(mktemp -d)"
trap 'rm -rf "$failures" "$here"' EXIT
python3 - "$bundle/executables.tar.xz" "$here" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as archive:
    # The "tar" filter keeps the executables' modes (Pythons without filters keep them too).
    if hasattr(tarfile, "tar_filter"):
        archive.extractall(sys.argv[2], filter="tar")
    else:
        archive.extractall(sys.argv[2])
PY
cp "$bundle/peers.py" "$here/"
cli="$here/bin/tilefuse"
fail() { echo "$1" >>"$failures"; echo "FAILED: $1"; }
section() { printf '\n== %s\n' "$*"; }

# Every executable gets a time limit, so a hang is a failure, not a stuck run.
limit() { timeout -k 10 "$@"; }
export PATH="$PATH:/sbin:/usr/sbin:/usr/local/cuda/bin"
# cuBLAS, the dense baseline of the spmm benchmarks, is loaded at run time by cudarc.
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/lib64"
# tests/candle (candle's CUDA device) links cuBLAS, cuBLASLt, cuRAND and NVRTC directly: where
# no toolkit has them, the ones pip installed for PyTorch and JAX do.
pip_cuda="$(python3 -c 'import nvidia, os; print(":".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, "lib"))))' 2>/dev/null || true)"
[[ -n "$pip_cuda" ]] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$pip_cuda"

# CUDA must run here. WGSL runs on the GPU through Vulkan when a loader and NVIDIA's ICD are
# present, and then must find the NVIDIA adapter (not a CPU fallback).
export TILEFUSE_REQUIRE_CUDA_DEVICE=1
libraries="$(ldconfig -p 2>/dev/null || true)"
icd=""
for candidate in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
  /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
  [[ -f "$candidate" ]] && { icd="$candidate"; break; }
done
if [[ "$libraries" == *libvulkan.so.1* && -n "$icd" ]]; then
  export WGPU_BACKEND=vulkan WGPU_ADAPTER_NAME=nvidia TILEFUSE_REQUIRE_WGPU=1
  export VK_DRIVER_FILES="${VK_DRIVER_FILES:-$icd}" VK_ICD_FILENAMES="${VK_ICD_FILENAMES:-$icd}"
  vulkan="Vulkan loader and NVIDIA ICD ($icd) found: WGSL runs on the GPU"
else
  export TILEFUSE_BACKENDS=cpu,cuda
  vulkan="no Vulkan loader (libvulkan.so.1) or no NVIDIA ICD: WGSL runs skipped; see README, 'GPU bundle'"
fi

# --- the machine --------------------------------------------------------------------------
if wanted info; then
{
  section "GPU and driver"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    || echo "nvidia-smi failed"
  echo "$vulkan"
  section "tilefuse info"
  limit 60 "$cli" info --ptxas || fail "tilefuse info"
} 2>&1 | tee "$out/info.txt"
fi

# --- tests --------------------------------------------------------------------------------
if wanted tests; then
{
  for test in "$here"/tests/*; do
    section "test $(basename "$test")"
    limit 300 "$test" || fail "test $(basename "$test")"
  done
} 2>&1 | tee "$out/tests.log"
fi

# --- the CLI on NumPy files and under Nsight (into tests.log) --------------------------------
if wanted tests; then
{
  section "tilefuse check --input on NumPy case files (numpy from the machine's Python)"
  cases="$here/cases"
  mkdir -p "$cases"
  if python3 - "$cases" <<'PY'
import sys
import numpy as np
out = sys.argv[1]
rng = np.random.default_rng(0)
w = rng.standard_normal((1000, 777)).astype(np.float16)
w[np.abs(w) < 1.3] = 0
x = rng.standard_normal((13, 777)).astype(np.float16)
np.savez(f"{out}/spmm.npz", w=w, x=x, expect_y=x.astype(np.float32) @ w.astype(np.float32).T)
a = (0.95 * np.exp(1j * rng.uniform(0, 6, 64))).astype(np.complex64)
u = (rng.standard_normal((3, 5000, 64)) + 1j * rng.standard_normal((3, 5000, 64))).astype(np.complex64)
reset = (rng.uniform(size=(3, 5000)) < 0.01).astype(np.uint8)
np.savez(f"{out}/scan.npz", a=a, u=u, reset=reset)
# The backward pass, with JAX's cotangents (jax.vjp of a plain sequential scan) as expect_.
dh = (rng.standard_normal((3, 5000, 64)) + 1j * rng.standard_normal((3, 5000, 64))).astype(np.complex64)
h0 = (rng.standard_normal((3, 64)) + 1j * rng.standard_normal((3, 64))).astype(np.complex64)
backward = dict(a=a, u=u, reset=reset, h0=h0, dh=dh)
try:
    import jax
    import jax.numpy as jnp

    def forward(a, u, h0):
        def step(h, x):
            u_t, r_t = x
            h = jnp.where(r_t[:, None] != 0, u_t, a * h + u_t)
            return h, h
        _, hs = jax.lax.scan(step, h0, (jnp.swapaxes(u, 0, 1), jnp.swapaxes(jnp.asarray(reset), 0, 1)))
        return jnp.swapaxes(hs, 0, 1)

    _, vjp = jax.vjp(forward, jnp.asarray(a), jnp.asarray(u), jnp.asarray(h0))
    da, du, dh0 = (np.asarray(x) for x in vjp(jnp.asarray(dh)))
    backward.update(expect_du=du, expect_da=da, expect_dh0=dh0)
except ImportError:
    print("no JAX here: scan_backward.npz without JAX's expectations")
np.savez(f"{out}/scan_backward.npz", **backward)
# The scan with u in float16, complex values as pairs in a last dimension of 2.
u16 = np.stack([u.real, u.imag], axis=-1).astype(np.float16)
np.savez(f"{out}/scan16.npz", a=a, u=u16, reset=reset)
# The attention backward (CPU and CUDA) with PyTorch's autograd gradients as expect_: causal
# (bottom-right, lq < lk), GQA 4/2, every block partial.
qb = rng.standard_normal((1, 200, 4, 64)).astype(np.float16)
kb = rng.standard_normal((1, 260, 2, 64)).astype(np.float16)
vb = rng.standard_normal((1, 260, 2, 64)).astype(np.float16)
dob = rng.standard_normal((1, 200, 4, 64)).astype(np.float16)
attention_backward = dict(q=qb, k=kb, v=vb, do=dob, block_m=np.int32(64), block_n=np.int32(64),
                          layout=np.full((1, 4, 5), 1, dtype=np.uint8), mask_mod=np.int32(1),
                          window=np.int32(1), scale=np.float32(0.125))
try:
    import torch

    q_, k_, v_ = (torch.tensor(x.astype(np.float64), requires_grad=True) for x in (qb, kb, vb))
    # [b, l, h, d] -> [b, h, l, d], each key/value head serving two query heads.
    qh = q_.transpose(1, 2)
    kh, vh = (x.transpose(1, 2).repeat_interleave(2, dim=1) for x in (k_, v_))
    s = (qh @ kh.transpose(-1, -2)) * float(np.float32(0.125))
    i = torch.arange(200)[:, None] + 260 - 200
    s = s.masked_fill(torch.arange(260)[None, :] > i, float("-inf"))
    o = (torch.softmax(s, dim=-1) @ vh).transpose(1, 2)
    o.backward(torch.tensor(dob.astype(np.float64)))
    attention_backward.update(expect_dq=q_.grad.numpy().astype(np.float32),
                              expect_dk=k_.grad.numpy().astype(np.float32),
                              expect_dv=v_.grad.numpy().astype(np.float32))
except ImportError:
    print("no PyTorch here: attention_backward.npz without its expectations")
np.savez(f"{out}/attention_backward.npz", **attention_backward)
q = rng.standard_normal((2, 300, 8, 128)).astype(np.float16)
k = rng.standard_normal((2, 777, 2, 128)).astype(np.float16)
v = rng.standard_normal((2, 777, 2, 128)).astype(np.float16)
layout = np.full((1, 3, 7), 1, dtype=np.uint8)  # every block partial: causal + window 200
np.savez(f"{out}/attention.npz", q=q, k=k, v=v, block_m=np.int32(128), block_n=np.int32(128),
         layout=layout, mask_mod=np.int32(3), window=np.int32(200), scale=np.float32(0.088))
PY
  then
    limit 120 "$cli" check --input "$cases/spmm.npz" --expect || fail "check --input spmm.npz"
    limit 120 "$cli" check --input "$cases/scan.npz" || fail "check --input scan.npz"
    limit 120 "$cli" check --input "$cases/attention.npz" || fail "check --input attention.npz"
    limit 120 "$cli" run scan --input "$cases/scan.npz" --output "$cases/out.npz" --backend cuda \
      || fail "run scan --backend cuda"
    limit 180 "$cli" check --input "$cases/scan_backward.npz" --expect || fail "check --input scan_backward.npz"
    limit 120 "$cli" run scan-backward --input "$cases/scan_backward.npz" --output "$cases/out.npz" \
      --backend cuda || fail "run scan-backward --backend cuda"
    limit 180 "$cli" check --input "$cases/scan16.npz" || fail "check --input scan16.npz"
    limit 120 "$cli" check --input "$cases/attention_backward.npz" --expect \
      || fail "check --input attention_backward.npz"
    limit 120 "$cli" run attention-backward --input "$cases/attention_backward.npz" \
      --output "$cases/out.npz" --backend cuda || fail "run attention-backward --backend cuda"
  else
    echo "no numpy here: NumPy case files skipped"
  fi
  section "tilefuse profile under Nsight"
  if command -v ncu >/dev/null; then
    limit 180 ncu --nvtx -k regex:tilefuse_scan -c 2 "$cli" profile scan --time 2048 --iters 2 \
      || fail "ncu tilefuse profile scan"
    limit 180 ncu --nvtx -k regex:tilefuse_attention -c 1 "$cli" profile attention --len 2048 --iters 1 \
      || fail "ncu tilefuse profile attention"
  else
    echo "no ncu here"
  fi
  if command -v nsys >/dev/null; then
    (cd "$here" && limit 180 nsys profile --trace=cuda,nvtx -o "$here/profile" --force-overwrite true \
      "$cli" profile spmm --iters 5 && limit 120 nsys stats --report nvtx_sum "$here/profile.nsys-rep") \
      || fail "nsys tilefuse profile spmm"
  else
    echo "no nsys here"
  fi
} 2>&1 | tee -a "$out/tests.log"
fi

# --- compute-sanitizer on the CUDA tests ----------------------------------------------------
if wanted sanitizer; then
{
  if command -v compute-sanitizer >/dev/null; then
    checked=0
    for tool in memcheck racecheck; do
      for test in "$here"/tests/*; do
        # CUDA tests have "cuda" in their names (cuda::<case> from on_backends!, cuda_*).
        list="$("$test" --list 2>/dev/null || true)"
        [[ "$list" == *cuda*": test"* ]] || continue
        section "compute-sanitizer --tool $tool $(basename "$test") (tests named *cuda*)"
        checked=$((checked + 1))
        # The size tests (millions of steps, thousands of keys, k of 70 000 and more) run the
        # same kernels as the smaller cases; under racecheck they would take many minutes. The
        # kernels run by the CPU emulator (<op>::cuda::emulated) never touch the GPU.
        TILEFUSE_BACKENDS=cpu,cuda limit 300 compute-sanitizer --tool "$tool" --error-exitcode 3 \
          "$test" cuda --test-threads=1 --skip millions_of_steps --skip long_rows --skip long_k \
          --skip ::emulated:: \
          || fail "compute-sanitizer $tool $(basename "$test")"
      done
    done
    ((checked > 0)) || fail "compute-sanitizer found no CUDA tests to run"
  else
    fail "compute-sanitizer not found"
  fi
} 2>&1 | tee "$out/sanitizer.log"
fi

# --- benchmarks ---------------------------------------------------------------------------
ops="${TILEFUSE_OPS:-}"
op_args=()
peer_ops=()
for op in ${ops//,/ }; do
  op_args+=(--op "$op")
  # attention's TFLOP/s are drawn against the measured mma.sync rate
  [[ "$op" == attention && ",$ops," != *",peak,"* ]] && op_args+=(--op peak)
  [[ "$op" == copy || "$op" == spmm || "$op" == scan || "$op" == scan-backward || "$op" == attention \
    || "$op" == attention-backward ]] && peer_ops+=("$op")
done
selected() { [[ -z "$ops" || ",$ops," == *",$1,"* ]]; }
peers_list="$(IFS=,; echo "${peer_ops[*]:-}")"
if wanted bench; then
rm -f "$out/bench.json" "$out/peers.json"
{
  section "criterion benches (each case run once, as a test)"
  for bench in "$here"/benches/*; do
    selected "$(basename "$bench")" || continue
    limit 300 "$bench" --bench --test || fail "bench $(basename "$bench")"
  done
  section "tilefuse bench ${ops:+(ops: $ops)}"
  # (spmm alone times 4 shapes x 4 token counts x 5 sparsities in two formats, the variants
  # and cuBLAS, and makes each weight on the host first: give it room.)
  limit 480 "$cli" bench "${op_args[@]}" --json "$out/bench.json" || fail "tilefuse bench"
  section "peers (PyTorch, JAX)"
  if [[ -z "$ops" || -n "$peers_list" ]]; then
    PYTHONUNBUFFERED=1 limit 300 python3 "$here/peers.py" --out "$out/peers.json" \
      ${peers_list:+--ops "$peers_list"} || fail "peers.py"
  fi
  # Diagnostics, not pass/fail: what limits the main cases (BENCH.md's open questions).
  section "where the time goes: ncu on the main cases"
  if command -v ncu >/dev/null; then
    ncu_sections=(--section SpeedOfLight --section Occupancy --section LaunchStats
      --section WarpStateStats --section MemoryWorkloadAnalysis)
    if selected spmm; then
      for config in "--n 16 --sparsity 0.8" "--n 8 --sparsity 0.9" "--n 64 --sparsity 0.8"; do
        # The target case also gets shared memory's bank conflicts and the issue slots.
        more=()
        [[ "$config" == "--n 16 "* ]] && more=(--section MemoryWorkloadAnalysis_Tables --section SchedulerStats)
        # shellcheck disable=SC2086 # config is a list of options
        # (profile spmm launches the Tiled-CSL kernel, then the bitmap one: two kernels.)
        limit 180 ncu "${ncu_sections[@]}" "${more[@]}" -k regex:tilefuse_spmm -c 2 "$cli" profile spmm \
          $config --iters 1 || echo "ncu on spmm $config failed"
      done
      # The variant with a tile's entries in registers, in the target case (BENCH.md).
      limit 180 ncu "${ncu_sections[@]}" --section MemoryWorkloadAnalysis_Tables --section SchedulerStats \
        -k regex:tilefuse_spmm_registers -c 1 "$cli" bench --op spmm --backend cuda --quick \
        --case "m=8192 k=8192 n=16 s=80%" --case registers || echo "ncu on the spmm variant failed"
    fi
    if selected attention; then
      # The kernel the launcher picks (on Hopper the sm_90a one), then the portable one.
      limit 180 ncu "${ncu_sections[@]}" -k regex:tilefuse_attention -c 1 "$cli" profile attention \
        --len 8192 --iters 1 || echo "ncu on attention failed"
      limit 180 ncu "${ncu_sections[@]}" -k regex:tilefuse_attention -c 1 "$cli" profile attention \
        --len 8192 --iters 1 --portable || echo "ncu on the portable attention kernel failed"
    fi
    if selected attention-backward; then
      limit 180 ncu "${ncu_sections[@]}" -k regex:tilefuse_attention_backward -c 2 "$cli" profile \
        attention-backward --len 8192 --iters 1 || echo "ncu on the attention backward failed"
    fi
  else
    echo "no ncu here"
  fi
} 2>&1 | tee "$out/bench.log"
fi

# --- summary, last --------------------------------------------------------------------------
{
  section "summary: tilefuse and peers, same run"
  inputs=()
  # Only this run's benchmarks (an earlier run's files may lie in the same folder).
  if wanted bench; then
    for f in "$out/bench.json" "$out/peers.json"; do [[ -f "$f" ]] && inputs+=("$f"); done
  fi
  if ((${#inputs[@]})); then
    "$cli" summary "${inputs[@]}"
    # The roofline picture comes back; its Markdown table (the one above) stays behind.
    "$cli" summary "${inputs[@]}" --plot "$here/roofline.svg" >/dev/null \
      && cp "$here/roofline.svg" "$out/"
  fi
  if [[ -s "$failures" ]]; then
    sed 's/^/FAILED: /' "$failures"
  else
    echo "all tests, sanitizer runs and benchmarks passed (sections run: $sections)"
  fi
} 2>&1 | tee "$out/summary.txt"
! [[ -s "$failures" ]]
