// The emulator's Hopper (sm_90a) instructions, as cuda/common/hopper.cuh declares them for
// the GPU: wgmma with shared-memory matrix descriptors decoded as the PTX ISA defines them
// (start address, leading and stride byte offsets, the swizzle modes applied to the shared
// address, K-major or MN-major operands), so a wrong descriptor reads the wrong elements;
// wgmma's fence and commit/wait groups (a thread's accumulators hold NaN from the wgmma that
// writes them until a wait covers its group, and a wgmma needs a wgmma.fence since the thread's
// last wait); TMA tensor loads from the emulator's own tensor map (abi.h's TfEmulatedTensorMap),
// swizzled as the map says, zero outside the tensor, landing when their mbarrier phase
// completes; named barriers; setmaxnreg, which only checks its constraints. Included by
// cuda.h. Products of a wgmma are summed in f64 and rounded once (the hardware's order and
// rounding differ within the tests' bounds).
#pragma once

#include <string>

#include "abi.h"

namespace tf_emu {

// A TMA load of the box at `coords` (rank of them, innermost first) of the tensor `map`
// describes, landing at shared `dst` when the phase of the mbarrier at `bar` completes (its
// transaction count falls by the box's bytes, out-of-bounds elements included, as zeros). A
// box wholly outside the tensor fails: the PTX ISA does not say what it completes.
void tma_load(uint32_t dst, const void *map, const int32_t *coords, uint32_t rank, uint32_t bar);

// The warp of the calling thread within its warpgroup (0 to 3); fails unless the block's
// threads form whole warpgroups.
uint32_t warp_in_warpgroup(const char *op);

// A decoded wgmma matrix descriptor.
struct MatrixDescriptor {
    uint32_t start, leading, stride, swizzle;
};

inline MatrixDescriptor decode_descriptor(uint64_t desc, const char *op) {
    const uint64_t reserved = desc & (0x3ull << 14 | 0x3ull << 30 | 0x7ull << 46 | 0x3FFull << 52);
    if (reserved != 0) fail((std::string(op) + ": a matrix descriptor with reserved bits set").c_str());
    if ((desc >> 49 & 7) != 0) fail((std::string(op) + ": a matrix descriptor with a base offset (unsupported)").c_str());
    return {uint32_t(desc & 0x3FFF) << 4, uint32_t(desc >> 16 & 0x3FFF) << 4, uint32_t(desc >> 32 & 0x3FFF) << 4,
            uint32_t(desc >> 62)};
}

// The bytes of a swizzle mode's row (128, 64, 32; 16 for none: a core matrix's row).
inline uint32_t swizzle_span(uint32_t mode) { return mode == 0 ? 16 : 256 >> mode; }

// Swizzle<B, 4, 3> on a shared address: its 16-byte chunk within a row of the span XORed with
// the row's index within the pattern (B = 3, 2, 1 for 128B, 64B, 32B).
inline uint32_t swizzle_address(uint32_t address, uint32_t mode) {
    const uint32_t bits = mode == 1 ? 7 : mode == 2 ? 3 : mode == 3 ? 1 : 0;
    return address ^ (((address >> 7) & bits) << 4);
}

// The shared address of element (mn, k) (k < 16) of a 16-bit wgmma operand: K-major (each mn
// index's k values contiguous) or MN-major (each k's mn values contiguous), as the PTX ISA's
// canonical layouts place them for the descriptor's swizzle mode.
inline uint32_t operand_address(const MatrixDescriptor &d, bool mn_major, uint32_t mn, uint32_t k) {
    uint32_t a;
    if (d.swizzle == 0) {
        // Core matrices of 8 rows of 16 bytes; K-major rows are mn, MN-major rows are k.
        a = mn_major ? d.start + (mn % 8) * 2 + (mn / 8) * d.stride + (k % 8) * 16 + (k / 8) * d.leading
                     : d.start + (mn % 8) * 16 + (mn / 8) * d.stride + (k % 8) * 2 + (k / 8) * d.leading;
    } else {
        const uint32_t span = swizzle_span(d.swizzle), per_row = span / 2;
        a = mn_major ? d.start + (mn % per_row) * 2 + (mn / per_row) * d.leading + (k % 8) * span + (k / 8) * d.stride
                     : d.start + (mn % 8) * span + (mn / 8) * d.stride + k * 2;
    }
    return swizzle_address(a, d.swizzle);
}

// One thread's part of wgmma.mma_async m64nNk16 with f32 accumulators: A from a descriptor
// (`a_desc`) or from the warp's registers (`a_regs`, mma.sync's A fragment), B from `b_desc`.
template <int N, class ToFloat>
inline void wgmma(float *d, uint64_t a_desc, const uint32_t *a_regs, uint64_t b_desc, bool scale_d,
                  uint32_t trans_a, uint32_t trans_b, ToFloat to_float, const char *op) {
    static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma: N a multiple of 8 up to 256");
    if (!mma_check_fenced()) fail((std::string(op) + " without a wgmma.fence since the thread's last wgmma.wait_group").c_str());
    const uint32_t warp = warp_in_warpgroup(op);
    struct Operands {
        uint64_t a_desc, b_desc;
        uint32_t a[4];
        bool scale_d;
    } mine{a_desc, b_desc, {0, 0, 0, 0}, scale_d};
    if (a_regs) std::memcpy(mine.a, a_regs, sizeof mine.a);
    const auto ex = warp_exchange(&mine, op);
    if (ex.active != 0xffffffffu) fail((std::string(op) + " with inactive lanes").c_str());
    auto lane_ops = [&](uint32_t l) { return static_cast<const Operands *>(ex.slots[l]); };
    for (uint32_t l = 0; l < 32; ++l)
        if (lane_ops(l)->a_desc != a_desc || lane_ops(l)->b_desc != b_desc || lane_ops(l)->scale_d != scale_d)
            fail((std::string(op) + ": lanes of a warp give different descriptors or scale-d").c_str());
    const MatrixDescriptor b = decode_descriptor(b_desc, op);
    const MatrixDescriptor a = a_regs ? MatrixDescriptor{} : decode_descriptor(a_desc, op);
    auto element = [&](uint32_t address) {
        if (address % 2 != 0) fail((std::string(op) + ": an operand element at an odd address").c_str());
        uint16_t bits;
        std::memcpy(&bits, shared_pointer(address, 2, op), 2);
        return double(to_float(bits));
    };
    // Row r (0 to 15) of the warp's A fragment: lane (r % 8) * 4 + (k % 8) / 2 holds it in
    // register r / 8 + 2 (k / 8), half k % 2.
    auto a_at = [&](uint32_t row, uint32_t k) {
        if (!a_regs) return element(operand_address(a, trans_a != 0, row, k));
        const uint32_t r = row % 16;
        return double(to_float(half_of(lane_ops((r % 8) * 4 + (k % 8) / 2)->a[r / 8 + 2 * (k / 8)], k % 2)));
    };
    float acc[N / 2];
    if (!scale_d) {
        std::fill(acc, acc + N / 2, 0.0f);
    } else if (!mma_current(d, acc, N / 2)) {
        std::copy(d, d + N / 2, acc);
    }
    const uint32_t lane = lane_id();
    float values[N / 2];
    for (uint32_t i = 0; i < N / 2; ++i) {
        const uint32_t row = 16 * warp + lane / 4 + 8 * ((i >> 1) & 1);
        const uint32_t col = 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
        double sum = acc[i];
        for (uint32_t k = 0; k < 16; ++k) sum += a_at(row, k) * element(operand_address(b, trans_b != 0, col, k));
        values[i] = float(sum);
    }
    warp_done(op);
    mma_issue(d, values, N / 2);
}

// setmaxnreg: every lane of the warp with the same value, 24 to 256 by 8.
inline void setmaxnreg(uint32_t registers, const char *op) {
    if (registers < 24 || registers > 256 || registers % 8 != 0) fail((std::string(op) + ": a count outside 24 to 256 by 8").c_str());
    warp_in_warpgroup(op);
    const auto ex = warp_exchange(&registers, op);
    if (ex.active != 0xffffffffu) fail((std::string(op) + " with inactive lanes").c_str());
    for (uint32_t l = 0; l < 32; ++l)
        if (*static_cast<const uint32_t *>(ex.slots[l]) != registers)
            fail((std::string(op) + ": lanes of a warp give different counts").c_str());
    warp_done(op);
}

}  // namespace tf_emu

namespace tf {

inline void wgmma_fence() { tf_emu::mma_fence(); }
inline void wgmma_commit() { tf_emu::mma_commit(); }
template <int Pending>
inline void wgmma_wait() {
    tf_emu::mma_wait(Pending);
}
inline void fence_proxy_async() {}
template <int N>
inline void fence_operands(float (&)[N]) {}
template <int N, int M>
inline void fence_operands(uint32_t (&)[N][M]) {}
inline void named_barrier_sync(uint32_t id, uint32_t threads) { tf_emu::named_barrier(id, threads, true); }
inline void named_barrier_arrive(uint32_t id, uint32_t threads) { tf_emu::named_barrier(id, threads, false); }
template <uint32_t Registers>
inline void setmaxnreg_inc() {
    tf_emu::setmaxnreg(Registers, "setmaxnreg.inc");
}
template <uint32_t Registers>
inline void setmaxnreg_dec() {
    tf_emu::setmaxnreg(Registers, "setmaxnreg.dec");
}
inline void tma_load_2d(uint32_t dst, const void *map, int32_t c0, int32_t c1, uint32_t bar) {
    const int32_t coords[] = {c0, c1};
    tf_emu::tma_load(dst, map, coords, 2, bar);
}
inline void tma_load_3d(uint32_t dst, const void *map, int32_t c0, int32_t c1, int32_t c2, uint32_t bar) {
    const int32_t coords[] = {c0, c1, c2};
    tf_emu::tma_load(dst, map, coords, 3, bar);
}
inline void tma_load_4d(uint32_t dst, const void *map, int32_t c0, int32_t c1, int32_t c2, int32_t c3, uint32_t bar) {
    const int32_t coords[] = {c0, c1, c2, c3};
    tf_emu::tma_load(dst, map, coords, 4, bar);
}

#define TF_EMU_WGMMA(n, type, to_float)                                                                      \
    template <uint32_t TransB, uint32_t TransA = 0>                                                          \
    inline void wgmma_m64n##n##k16_##type##_ss(float (&d)[n / 2], uint64_t a_desc, uint64_t b_desc,         \
                                                bool scale_d) {                                              \
        tf_emu::wgmma<n>(d, a_desc, nullptr, b_desc, scale_d, TransA, TransB, to_float,                      \
                         "wgmma m64n" #n "k16 " #type " (A, B in shared memory)");                           \
    }                                                                                                        \
    template <uint32_t TransB>                                                                               \
    inline void wgmma_m64n##n##k16_##type##_rs(float (&d)[n / 2], const uint32_t (&a)[4], uint64_t b_desc,  \
                                                bool scale_d) {                                              \
        tf_emu::wgmma<n>(d, 0, a, b_desc, scale_d, 0, TransB, to_float,                                      \
                         "wgmma m64n" #n "k16 " #type " (A in registers)");                                  \
    }
TF_EMU_WGMMA(64, f16, tf_emu::f16_bits_to_float)
TF_EMU_WGMMA(128, f16, tf_emu::f16_bits_to_float)
TF_EMU_WGMMA(64, bf16, tf_emu::bf16_bits_to_float)
TF_EMU_WGMMA(128, bf16, tf_emu::bf16_bits_to_float)
#undef TF_EMU_WGMMA

}  // namespace tf
