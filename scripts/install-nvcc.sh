#!/usr/bin/env bash
# Installs NVIDIA's nvcc 13.0 from PyPI into .cuda/ (git-ignored), so CUDA kernels can be built
# on a machine without a CUDA toolkit. Prints the NVCC= line to use.
#
# The pins matter: nvidia-cuda-nvcc's dependency on nvidia-nvvm is unpinned and pulls a newer
# cicc, and without nvidia-cuda-cccl cuda_fp16.h fails on <nv/target>.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${TILEFUSE_NVCC_DIR:-$root/.cuda}"
home="$dest/nvidia/cu13"
packages=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
)

if [[ -x "$home/bin/nvcc" ]] && "$home/bin/nvcc" --version | grep -q "release 13.0"; then
  echo "nvcc 13.0 already installed in $home" >&2
else
  python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
    --upgrade --target "$dest" "${packages[@]}"
fi

# Fail here, not later in build.rs, if the toolkit cannot compile a kernel.
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
printf '#include <cuda_fp16.h>\n__global__ void probe(__half *p) { p[0] = __float2half(1.0f); }\n' \
  >"$probe/probe.cu"
"$home/bin/nvcc" -fatbin -arch=sm_80 -o "$probe/probe.fatbin" "$probe/probe.cu"

echo "export NVCC=$home/bin/nvcc"
