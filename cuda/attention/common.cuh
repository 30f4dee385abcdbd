// What the attention forward (cuda/attention.cu) and backward (cuda/attention_backward.cu)
// kernels share: tile copies into swizzled shared memory, the element mask as an interval of
// allowed distances, and the decision whether a tile of scores is wholly allowed, wholly
// masked, or crosses the mask's edge.
#pragma once

#include "abi.h"
#include "common/mma.cuh"

#include <cstdint>

namespace attention_common {

using tf::swizzled;

// Starts copying Rows rows of D values into a swizzled tile: row r from source(r), or zeros
// where that is null (a zero-filling copy still names a valid address: `base`).
template <int D, int Rows, int Threads, class Source>
__device__ __forceinline__ void load_rows(uint32_t tile, const uint16_t *base, Source source) {
    for (uint32_t c = threadIdx.x; c < Rows * (D / 8); c += Threads) {
        const uint32_t row = c / (D / 8), chunk = c % (D / 8);
        const uint16_t *src = source(row);
        const bool valid = src != nullptr;
        tf::cp_async_16(tile + swizzled<D>(row, chunk), valid ? src + chunk * 8 : base, valid);
    }
}

// x, or NaN for ±inf (and NaN): x·0 is NaN exactly when x is not finite. One FFMA; IEEE
// arithmetic (no fast math) keeps it from being folded away.
__device__ __forceinline__ float nan_unless_finite(float x) { return fmaf(x, 0.0f, x); }

// The distances i' - j (i' = i + lk - lq: rows aligned bottom-right) that the element mask
// allows, an interval: causal i' >= j, sliding window |i' - j| < window, both, or all.
struct Allowed {
    int64_t lo, hi;
    __device__ bool contains(int64_t distance) const { return lo <= distance && distance <= hi; }
};
__device__ __forceinline__ Allowed allowed_distances(uint32_t element, uint32_t window_size) {
    constexpr int64_t kAll = int64_t(1) << 40;  // past any distance of 32-bit rows and keys
    const int64_t window = window_size;
    switch (element) {
        case 1: return {0, kAll};
        case 2: return {1 - window, window - 1};
        case 3: return {0, window - 1};
        default: return {-kAll, kAll};
    }
}

// Which scores of a tile the mask allows.
enum class Coverage { kAll, kNone, kSome };

// The coverage of a tile whose distances i' - j run from `nearest` to `farthest`: a full
// block's tiles allow every score, a partial block's as the element mask says; `past_end`
// (keys past lk in the tile) makes an allowed tile kSome, so that those keys are tested.
__device__ __forceinline__ Coverage coverage_of(const Allowed &allowed, bool partial,
                                                int64_t nearest, int64_t farthest, bool past_end) {
    if (partial && (farthest < allowed.lo || nearest > allowed.hi)) return Coverage::kNone;
    const bool inside = !partial || (allowed.contains(nearest) && allowed.contains(farthest));
    return inside && !past_end ? Coverage::kAll : Coverage::kSome;
}

}  // namespace attention_common
