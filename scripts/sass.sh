#!/usr/bin/env bash
# Prints the SASS that one kernel file compiles to, without a GPU: what a hot loop really
# executes (which loads are 128-bit, what waits on what). cuobjdump and nvdisasm come from
# PyPI into .cuda/sass/ (git-ignored) on first use; nvcc is $NVCC, or else the one that
# scripts/install-nvcc.sh puts in .cuda/.
#
#   scripts/sass.sh spmm                                       # every kernel of cuda/spmm.cu
#   scripts/sass.sh spmm tilefuse_spmm_tiledcsl_f16_n16_same   # one kernel
#   TILEFUSE_SASS_ARCH=sm_80 scripts/sass.sh scan              # another target (default sm_90)
#
# The ptxas report (registers, spills) goes to stderr, the SASS to stdout, without the
# instruction encodings.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: scripts/sass.sh FILE [KERNEL]   (FILE: a name in cuda/, without .cu)" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source_file="$root/cuda/$1.cu"
arch="${TILEFUSE_SASS_ARCH:-sm_90}"
nvcc="${NVCC:-$root/.cuda/nvidia/cu13/bin/nvcc}"
[[ -f "$source_file" ]] || { echo "no such kernel file: $source_file" >&2; exit 2; }
[[ -x "$nvcc" ]] || { echo "nvcc not found at $nvcc: run scripts/install-nvcc.sh, set NVCC" >&2; exit 2; }

# cuobjdump 13.0 is not on PyPI; 13.2 reads the cubins of nvcc 13.0.
tools="$root/.cuda/sass"
if [[ ! -x "$tools/nvidia/cu13/bin/cuobjdump" ]]; then
  python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
    --upgrade --target "$tools" nvidia-cuda-cuobjdump==13.2.51 nvidia-cuda-nvdisasm==13.2.51
fi
export PATH="$tools/nvidia/cu13/bin:$PATH"  # cuobjdump runs nvdisasm

cubin="$(mktemp --suffix=.cubin)"
trap 'rm -f "$cubin"' EXIT
# build.rs's flags, for one architecture.
"$nvcc" -cubin -arch="$arch" -O3 -lineinfo -std=c++17 -I"$root/cuda" -Xptxas -v \
  -o "$cubin" "$source_file"
cuobjdump -sass ${2:+-fun "$2"} "$cubin" | sed -E 's@ */\* 0x[0-9a-f]{16} \*/ *$@@; /^ *$/d'
