// Kernels that test the emulator's own model of mbarriers and the copies they track
// (src/backend/emulator.rs runs them): a one-thread "producer" copies 16 bytes from `src`
// into shared memory and thread 1 of the block reads them into out[0] (before any wait, or
// after a wait as `mode` says) and out[1] (after the right wait).
#include <cstdint>

#include "common/mma.cuh"

struct TfMbarrierModelParams {
    uint64_t src;
    uint64_t out;
    uint32_t mode;
    uint32_t reserved;
};

// mode: 0 a bulk copy, read before the wait; 1 a bulk copy, read after a wait for the wrong
// parity; 2 a tracked cp.async, read before the wait; 3 a bulk copy whose barrier expects two
// arrivals and gets one (a hang); 4 a second arrival in a phase that still waits for bytes
// (more arrivals than the count); 5 a bulk copy with
// fewer bytes announced than copied (a hang); 6 the barrier's shared memory overwritten.
extern "C" void tf_mbarrier_model(const TfMbarrierModelParams p) {
    uint8_t *shared = tf::dynamic_shared();
    const uint32_t bar = tf::smem_addr(shared), data = bar + 16;
    uint32_t *out = reinterpret_cast<uint32_t *>(p.out);
    const void *src = reinterpret_cast<const void *>(p.src);
    if (threadIdx.x == 0) tf::mbarrier_init(bar, p.mode == 3 ? 2 : 1);
    __syncthreads();
    if (threadIdx.x == 0 && p.mode == 4) {
        tf::mbarrier_expect_tx(bar, 16);
        tf::mbarrier_arrive(bar);
        tf::mbarrier_arrive(bar);
    } else if (threadIdx.x == 0) {
        if (p.mode == 2) {
            tf::cp_async_16(data, src, true);
            tf::cp_async_mbarrier_arrive(bar);
        } else {
            tf::mbarrier_expect_tx(bar, p.mode == 5 ? 8 : 16);
            tf::bulk_copy(data, src, 16, bar);
        }
        if (p.mode == 6) *reinterpret_cast<uint32_t *>(shared) = 0;
        tf::mbarrier_arrive(bar);
    } else {
        const uint32_t *value = reinterpret_cast<const uint32_t *>(shared + 16);
        if (p.mode == 1) tf::mbarrier_wait(bar, 1);
        out[0] = *value;
        tf::mbarrier_wait(bar, 0);
        out[1] = *value;
    }
}

TF_EMULATOR_ENTRY(mbarrier_model, TfMbarrierModelParams)
