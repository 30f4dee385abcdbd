// The plumbing test: one warp per 16x8 tile of c = a · bᵀ through ldmatrix + mma.sync, so a
// wrong fatbin, ABI or launch shows up as a wrong number. Ragged edges are zero-filled in
// shared memory; ldmatrix only ever reads shared memory.
#include "abi.h"
#include "common/mma.cuh"

namespace {

constexpr int kTileM = 16;
constexpr int kTileN = 8;
constexpr int kTileK = 16;

struct __align__(16) WarpTiles {
    __half a[kTileM][kTileK];
    __half b[kTileN][kTileK];
};

// Copies rows [row0, row0 + rows) x cols [k0, k0 + 16) of a row-major [limit_rows, k] matrix
// into tile, zero outside the matrix.
template <int Rows>
__device__ void load_tile(__half (&tile)[Rows][kTileK], const __half *src, uint32_t row0,
                          uint32_t limit_rows, uint32_t k0, uint32_t k, int lane) {
    for (int i = lane; i < Rows * kTileK; i += 32) {
        const uint32_t r = row0 + i / kTileK;
        const uint32_t c = k0 + i % kTileK;
        tile[i / kTileK][i % kTileK] =
            (r < limit_rows && c < k) ? src[size_t(r) * k + c] : __float2half(0.0f);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(TF_SMOKE_WARPS * 32)
    tilefuse_smoke_mma_f16_f32(const __grid_constant__ TfSmokeMmaParams p) {
    __shared__ WarpTiles tiles[TF_SMOKE_WARPS];
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const uint32_t tiles_n = p.n / kTileN + (p.n % kTileN != 0);
    const uint32_t tiles_m = p.m / kTileM + (p.m % kTileM != 0);
    const uint32_t tile = blockIdx.x * TF_SMOKE_WARPS + warp;
    if (tile >= tiles_m * tiles_n) return;  // whole warps exit together: no barrier below
    const uint32_t m0 = (tile / tiles_n) * kTileM;
    const uint32_t n0 = (tile % tiles_n) * kTileN;
    const __half *a = reinterpret_cast<const __half *>(p.a);
    const __half *b = reinterpret_cast<const __half *>(p.b);
    WarpTiles &t = tiles[warp];

    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const uint32_t tiles_k = p.k / kTileK + (p.k % kTileK != 0);  // no k0 + 16 that can wrap
    for (uint32_t t_k = 0; t_k < tiles_k; ++t_k) {
        const uint32_t k0 = t_k * kTileK;
        load_tile(t.a, a, m0, p.m, k0, p.k, lane);
        load_tile(t.b, b, n0, p.n, k0, p.k, lane);
        __syncwarp();
        uint32_t fa[4], fb[2];
        tf::ldmatrix_x4(fa, tf::smem_addr(&t.a[lane % 16][(lane / 16) * 8]));
        tf::ldmatrix_x2(fb, tf::smem_addr(&t.b[lane % 8][((lane / 8) % 2) * 8]));
        tf::mma_m16n8k16_f16_f32(acc, fa, fb);
        __syncwarp();  // the next iteration overwrites the tiles
    }

    float *c = reinterpret_cast<float *>(p.c);
    const uint32_t row = m0 + lane / 4;
    const uint32_t col = n0 + (lane % 4) * 2;
    for (int i = 0; i < 4; ++i) {
        const uint32_t r = row + (i / 2) * 8;
        const uint32_t cc = col + i % 2;
        if (r < p.m && cc < p.n) c[size_t(r) * p.n + cc] = acc[i];
    }
}
