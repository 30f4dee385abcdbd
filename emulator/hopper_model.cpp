// A kernel that tests the emulator's own model of the sm_90a instructions (emulator/hopper.h;
// src/backend/emulator.rs runs it): one warpgroup loads a 64 x 64 f16 tile of A and of B into
// shared memory by TMA and multiplies them with wgmma, four k steps of 16, into out [64][64]
// (row-major f32), as `mode` says:
//   0  A and B K-major, 128-byte swizzle (out = A·Bᵀ, B stored [n][k])
//   1  A from registers, B N-major, 128-byte swizzle (out = A·B, B stored [k][n])
//   2  as 0, but B's descriptor says no swizzle (a wrong descriptor)
//   3  as 0, the accumulators stored before the wait
//   4  as 0, without wgmma.fence
//   5  A and B K-major without swizzle: core matrices placed by 3-D boxes [k / 8][row][8]
//   6  named barriers: warps 2 and 3 write out[0] then arrive, warps 0 and 1 wait and add one
//   7  setmaxnreg with a count that is not a multiple of 8
#include <cstdint>

#include "common/hopper.cuh"
#include "common/mma.cuh"
#include "common/pipeline.cuh"

struct TfHopperModelParams {
    TfTensorMap a_map;
    TfTensorMap b_map;
    uint64_t a;  // A [64][64] f16 row-major, for mode 1's registers
    uint64_t out;
    uint32_t mode;
    uint32_t reserved[13];
};

extern "C" void tf_hopper_model(const TfHopperModelParams p) {
    uint8_t *shared = tf::dynamic_shared();
    const uint32_t base = tf::smem_addr(shared);
    const uint32_t bar = base, a_tile = base + 1024, b_tile = base + 1024 + 8192;
    float *out = reinterpret_cast<float *>(p.out);
    const uint32_t t = threadIdx.x, warp = t / 32, lane = t % 32;
    if (p.mode == 6) {
        if (warp >= 2) {
            if (t == 64) out[0] = 1.0f;
            tf::named_barrier_arrive(1, 128);
        } else {
            tf::named_barrier_sync(1, 128);
            if (t == 0) out[0] += 1.0f;
        }
        return;
    }
    if (p.mode == 7) {
        tf_emu::setmaxnreg(100, "setmaxnreg.inc");
        return;
    }
    if (t == 0) {
        tf::mbarrier_init(bar, 1);
    }
    __syncthreads();
    if (t == 0) {
        tf::mbarrier_expect_tx(bar, 2 * 8192);
        if (p.mode == 5) {
            tf::tma_load_3d(a_tile, &p.a_map, 0, 0, 0, bar);
            tf::tma_load_3d(b_tile, &p.b_map, 0, 0, 0, bar);
        } else {
            tf::tma_load_2d(a_tile, &p.a_map, 0, 0, bar);
            tf::tma_load_2d(b_tile, &p.b_map, 0, 0, bar);
        }
        tf::mbarrier_arrive(bar);
    }
    tf::mbarrier_wait(bar, 0);

    float d[32];
    for (float &v : d) v = 0.0f;
    if (p.mode != 4) tf::wgmma_fence();
    for (uint32_t step = 0; step < 4; ++step) {
        if (p.mode == 5) {
            // [k / 8][row][8]: core matrices 128 bytes apart along rows, 1024 along k.
            const uint32_t k_block = 2 * step * 1024;
            const uint64_t a_desc = tf::matrix_descriptor(a_tile + k_block, 1024, 128, tf::Swizzle::None);
            const uint64_t b_desc = tf::matrix_descriptor(b_tile + k_block, 1024, 128, tf::Swizzle::None);
            tf::wgmma_m64n64k16_f16_ss<0>(d, a_desc, b_desc, true);
        } else if (p.mode == 1) {
            // Rows 16 warp + lane / 4 (+ 8), k 16 step + 2 (lane % 4) (+ 1, + 8).
            const uint16_t *a = reinterpret_cast<const uint16_t *>(p.a);
            const uint32_t row = 16 * warp + lane / 4, k = 16 * step + 2 * (lane % 4);
            auto pair = [&](uint32_t r, uint32_t c) { return uint32_t(a[r * 64 + c]) | uint32_t(a[r * 64 + c + 1]) << 16; };
            const uint32_t regs[4] = {pair(row, k), pair(row + 8, k), pair(row, k + 8), pair(row + 8, k + 8)};
            // B [k][64]: 16 k rows of 128 bytes a step, 8 rows a swizzle pattern.
            const uint64_t b_desc = tf::matrix_descriptor(b_tile + step * 2048, 8192, 1024, tf::Swizzle::B128);
            tf::wgmma_m64n64k16_f16_rs<1>(d, regs, b_desc, true);
        } else {
            const uint64_t a_desc = tf::matrix_descriptor(a_tile + step * 32, 16, 1024, tf::Swizzle::B128);
            const uint64_t b_desc = tf::matrix_descriptor(b_tile + step * 32, 16, 1024,
                                                          p.mode == 2 ? tf::Swizzle::None : tf::Swizzle::B128);
            tf::wgmma_m64n64k16_f16_ss<0>(d, a_desc, b_desc, true);
        }
    }
    tf::wgmma_commit();
    const auto store = [&] {
        for (uint32_t i = 0; i < 32; ++i) {
            const uint32_t row = 16 * warp + lane / 4 + 8 * ((i >> 1) & 1);
            const uint32_t col = 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
            out[row * 64 + col] = d[i];
        }
    };
    if (p.mode == 3) store();
    tf::wgmma_wait<0>();
    if (p.mode != 3) store();
}

TF_EMULATOR_ENTRY(hopper_model, TfHopperModelParams)
