/*
 * tilefuse kernel ABI: the parameter struct that each kernel takes by value
 * (`__grid_constant__ const`). Plain C, fixed-width types, no padding holes: this file is the
 * one source of truth, and src/backend/abi.rs is generated from it by scripts/gen-abi.sh.
 */
#ifndef TILEFUSE_ABI_H
#define TILEFUSE_ABI_H

#include <stdint.h>

/* A device address (CUdeviceptr). */
typedef uint64_t tf_dptr;

/*
 * tilefuse_smoke_mma_f16_f32: the plumbing test. c = a · bᵀ with
 *   a [m, k] f16 row-major, b [n, k] f16 row-major, c [m, n] f32 row-major;
 * one warp per 16x8 tile of c, ldmatrix + mma.sync.m16n8k16, f32 accumulation.
 * Any m, n, k >= 1; grid.x covers ceil(m/16) * ceil(n/8) tiles, TF_SMOKE_WARPS per block.
 */
#define TF_SMOKE_WARPS 4
typedef struct TfSmokeMmaParams {
    tf_dptr a;
    tf_dptr b;
    tf_dptr c;
    uint32_t m;
    uint32_t n;
    uint32_t k;
    uint32_t reserved;
} TfSmokeMmaParams;

#endif /* TILEFUSE_ABI_H */
