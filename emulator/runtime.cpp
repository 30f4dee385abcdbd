// The emulator's scheduler (see cuda.h): blocks run one after another; the threads of a block
// are fibers (ucontext) that run until they reach a synchronisation point (__syncthreads, a
// warp-collective operation) or exit, in the order the launch asks for.
#include <ucontext.h>

#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda.h"

namespace tf_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kSharedGuard = 256 * 1024;  // checked after each block: writes past the end
constexpr uint8_t kGuardByte = 0xA5;
constexpr uint8_t kPoisonByte = 0xFF;  // an f16/bf16 NaN, an f32 NaN

struct Copy {
    uint32_t dst;
    const void *src;
    bool valid;
    uint32_t bytes = 16;
    std::shared_ptr<const std::vector<uint8_t>> owned;  // what src points into, if the copy holds it
};

// Ready: runs when its warp's turn comes; Yielded: runs once the other warps had theirs.
enum class State { Ready, Yielded, AtBarrier, AtWarp, AtMbarrier, AtNamed, Done };

// A named barrier (bar.sync / bar.arrive with an id and a thread count).
struct NamedBarrier {
    uint32_t count = 0;    // threads a round waits for
    uint32_t arrived = 0;  // threads of the current round so far
};

// A wgmma whose result is not yet the thread's: it lands in `dst` when a wait covers its group.
struct PendingMma {
    float *dst;
    std::vector<float> values;
};

struct Mbarrier {
    uint32_t expected = 0;  // arrivals a phase
    uint32_t pending = 0;   // arrivals the current phase still waits for
    int64_t tx = 0;         // bytes announced and not yet issued as bulk copies
    uint64_t phase = 0;     // phases completed
    std::vector<Copy> landing;  // copies that land when the current phase completes
};
constexpr uint64_t kMbarrierMagic = 0x6d62617272696572;  // what the emulator keeps in its 8 bytes

struct Fiber {
    ucontext_t context;
    std::unique_ptr<char[]> stack;
    Dim3 index;
    uint32_t linear;
    State state = State::Ready;
    const char *warp_op = nullptr;
    const void *warp_slot = nullptr;
    std::vector<Copy> open_group;
    std::vector<std::vector<Copy>> groups;
    uint32_t wait_bar = 0, wait_parity = 0;  // AtMbarrier: the phase it waits for
    uint32_t named = 0;                      // AtNamed: the barrier's id
    std::vector<PendingMma> mma_open;                // wgmmas since the last commit
    std::vector<std::vector<PendingMma>> mma_groups;  // committed, oldest first
    bool mma_fenced = false;                          // a wgmma.fence since the last wait
};

struct Block {
    Dim3 index;
    std::vector<Fiber> fibers;
    std::vector<uint8_t> shared;  // dynamic shared memory + guard
    uint32_t shared_bytes = 0;
    std::map<uint32_t, Mbarrier> barriers;  // by shared address
    std::map<uint32_t, NamedBarrier> named;  // by id
};

struct Emulator {
    Dim3 grid, block_dim;
    Block *block = nullptr;
    Fiber *current = nullptr;
    ucontext_t scheduler;
    const std::function<void()> *thread = nullptr;
    std::string error;
    bool failed = false;
    uint32_t order = 0;
    std::unordered_map<const uint32_t *, uint32_t> first_released;  // flag -> oldest non-zero
    const uint32_t *polled = nullptr;
    uint32_t polls = 0;
};

thread_local Emulator *emu = nullptr;  // the launch running on this thread

Fiber &me() { return *emu->current; }

void yield_to_scheduler() { swapcontext(&me().context, &emu->scheduler); }

void land(const Copy &c) {
    uint8_t *dst = shared_pointer(c.dst, c.bytes, "copy");
    if (c.valid) {
        std::memcpy(dst, c.src, c.bytes);
    } else {
        std::memset(dst, 0, c.bytes);
    }
}

void fiber_main() {
    (*emu->thread)();
    Fiber &f = me();
    if (!f.mma_open.empty() || !f.mma_groups.empty())
        fail("the thread ended with wgmma results never waited for (wgmma.commit_group, wgmma.wait_group)");
    for (auto &group : f.groups)
        for (const Copy &c : group) land(c);
    for (const Copy &c : f.open_group) land(c);
    f.state = State::Done;
    yield_to_scheduler();
}

uint32_t warp_of(const Fiber &f) { return f.linear / 32; }

// Releases warp `w` if its live lanes all wait at the same collective.
bool release_warp(Block &b, size_t w) {
    const size_t end = std::min(b.fibers.size(), (w + 1) * 32);
    const char *op = nullptr;
    for (size_t i = w * 32; i < end; ++i) {
        const Fiber &f = b.fibers[i];
        if (f.state == State::Done) continue;
        if (f.state != State::AtWarp) return false;
        if (op && std::strcmp(op, f.warp_op) != 0) {
            emu->error = std::string("lanes of one warp at different collectives: ") + op + " and " + f.warp_op;
            emu->failed = true;
            return false;
        }
        op = f.warp_op;
    }
    if (!op) return false;
    for (size_t i = w * 32; i < end; ++i)
        if (b.fibers[i].state == State::AtWarp) b.fibers[i].state = State::Ready;
    return true;
}

// Releases the block barrier if every live thread waits there.
bool release_block(Block &b) {
    bool any = false;
    for (const Fiber &f : b.fibers) {
        if (f.state == State::Done) continue;
        if (f.state != State::AtBarrier) return false;
        any = true;
    }
    if (!any) return false;
    for (Fiber &f : b.fibers)
        if (f.state == State::AtBarrier) f.state = State::Ready;
    return true;
}

std::vector<uint32_t> order_of(size_t count, const Launch &launch, std::mt19937_64 &rng) {
    std::vector<uint32_t> order(count);
    for (size_t i = 0; i < count; ++i) order[i] = uint32_t(i);
    if (launch.order == 1) std::reverse(order.begin(), order.end());
    if (launch.order == 2) std::shuffle(order.begin(), order.end(), rng);
    return order;
}

// Runs warp `w` as far as it goes: its lanes up to their next synchronisation point, its
// collectives as soon as every lane reaches them, until it waits at the block barrier or ends.
// A warp runs ahead of the others, so a missing barrier between warps changes the result.
// Returns whether any lane ran.
bool run_warp(Block &b, size_t w, const Launch &launch, std::mt19937_64 &rng) {
    const size_t lanes = std::min<size_t>(32, b.fibers.size() - w * 32);
    bool progressed = false;
    for (;;) {
        bool ran = false;
        for (uint32_t lane : order_of(lanes, launch, rng)) {
            Fiber &f = b.fibers[w * 32 + lane];
            if (f.state != State::Ready) continue;
            emu->current = &f;
            swapcontext(&emu->scheduler, &f.context);
            emu->current = nullptr;
            if (emu->failed) return true;
            ran = true;
        }
        if (!ran && !release_warp(b, w)) return progressed;
        progressed = true;
    }
}

void run_block(const Launch &launch, std::mt19937_64 &rng) {
    Block &b = *emu->block;
    for (Fiber &f : b.fibers) {
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.get();
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = nullptr;
        makecontext(&f.context, fiber_main, 0);
    }
    const size_t warps = (b.fibers.size() + 31) / 32;
    do {
        bool progressed;
        do {
            progressed = false;
            for (Fiber &f : b.fibers)
                if (f.state == State::Yielded) f.state = State::Ready;
            for (uint32_t w : order_of(warps, launch, rng)) {
                progressed |= run_warp(b, w, launch, rng);
                if (emu->failed) return;
            }
        } while (progressed);
    } while (release_block(b));
    for (const Fiber &f : b.fibers) {
        if (f.state == State::AtMbarrier) {
            emu->error = "hang: threads wait for an mbarrier phase that never completes (an arrival or "
                         "a copy's bytes missing, or a wait for the wrong phase)";
            emu->failed = true;
            return;
        }
    }
    for (const Fiber &f : b.fibers)
        if (f.state != State::Done) {
            emu->error = "deadlock: threads wait at a barrier or collective that others never reach";
            emu->failed = true;
            return;
        }
    for (const auto &[address, barrier] : b.barriers)
        if (!barrier.landing.empty()) {
            emu->error = "the block ended with copies in flight: an mbarrier phase that tracks them never completed";
            emu->failed = true;
            return;
        }
}

}  // namespace

const Dim3 &thread_idx() { return me().index; }
const Dim3 &block_idx() { return emu->block->index; }
const Dim3 &block_dim() { return emu->block_dim; }
const Dim3 &grid_dim() { return emu->grid; }
uint8_t *shared_base() { return emu->block->shared.data(); }
uint32_t shared_size() { return emu->block->shared_bytes; }

namespace {
// The emulated program's __shared__ variables are thread_locals of this library, which all
// lie in its one thread-local block; addresses count from this one.
alignas(16) thread_local uint8_t static_shared_anchor;
}  // namespace

uint32_t shared_address(const void *ptr) {
    const auto *p = static_cast<const uint8_t *>(ptr);
    const uint8_t *base = shared_base();
    if (p >= base && p <= base + shared_size()) return uint32_t(p - base);
    const int64_t distance = p - &static_shared_anchor;
    if (distance <= -int64_t(kStaticShared) / 2 || distance >= int64_t(kStaticShared) / 2)
        fail("shared address of a pointer that is not in shared memory");
    return uint32_t(int64_t(kStaticShared) + distance);
}

uint8_t *shared_pointer(uint32_t address, uint32_t bytes, const char *op) {
    if (address >= kStaticShared / 2) return &static_shared_anchor + (int64_t(address) - int64_t(kStaticShared));
    if (address + uint64_t(bytes) > shared_size()) fail((std::string(op) + " past the end of shared memory").c_str());
    return shared_base() + address;
}
uint32_t lane_id() { return me().linear % 32; }

void fail(const char *message) {
    char where[96];
    std::snprintf(where, sizeof where, " (block %u,%u,%u thread %u)", emu->block->index.x, emu->block->index.y,
                  emu->block->index.z, me().linear);
    emu->error = std::string(message) + where;
    emu->failed = true;
    me().state = State::Done;
    yield_to_scheduler();
    std::abort();  // never resumed
}

void sync_threads() {
    me().state = State::AtBarrier;
    yield_to_scheduler();
}

WarpExchange warp_exchange(const void *mine, const char *op) {
    me().warp_slot = mine;
    me().warp_op = op;
    me().state = State::AtWarp;
    yield_to_scheduler();
    WarpExchange ex{};
    const uint32_t warp = warp_of(me());
    for (uint32_t l = 0; l < 32; ++l) {
        const size_t i = warp * 32 + l;
        if (i >= emu->block->fibers.size()) break;
        const Fiber &f = emu->block->fibers[i];
        if (f.state == State::Done && f.warp_slot == nullptr) continue;
        ex.slots[l] = f.warp_slot;
        ex.active |= 1u << l;
    }
    return ex;
}

void warp_done(const char *op) {
    // A second rendezvous: no lane may overwrite its slot before every lane has read it.
    me().warp_op = op;
    me().state = State::AtWarp;
    yield_to_scheduler();
    me().warp_slot = nullptr;
}

uint32_t acquire(const uint32_t *flag) {
    emu->polls = flag == emu->polled ? emu->polls + 1 : 0;
    emu->polled = flag;
    if (emu->polls > 100000) fail("spins on a flag that no earlier block sets");
    const auto first = emu->first_released.find(flag);
    return emu->order != 0 && first != emu->first_released.end() ? first->second : *flag;
}

void release(uint32_t *flag, uint32_t value) {
    if (value == 0) {
        emu->first_released.erase(flag);  // a flag reset for reuse starts a new history
    } else {
        emu->first_released.emplace(flag, value);
    }
    *flag = value;
}

void named_barrier(uint32_t id, uint32_t count, bool wait) {
    const char *op = wait ? "bar.sync" : "bar.arrive";
    if (id == 0 || id > 15) fail((std::string(op) + ": a barrier id other than 1 to 15 (0 is __syncthreads')").c_str());
    if (count == 0 || count % 32 != 0 || count > emu->block->fibers.size())
        fail((std::string(op) + ": a thread count that is not a multiple of 32 up to the block's threads").c_str());
    NamedBarrier &n = emu->block->named[id];
    if (n.arrived == 0) n.count = count;
    if (n.count != count) fail((std::string(op) + ": threads of one barrier round give different counts").c_str());
    if (++n.arrived == n.count) {
        n.arrived = 0;
        for (Fiber &f : emu->block->fibers)
            if (f.state == State::AtNamed && f.named == id) f.state = State::Ready;
        return;
    }
    if (!wait) return;
    me().state = State::AtNamed;
    me().named = id;
    yield_to_scheduler();
}

void mma_fence() { me().mma_fenced = true; }

bool mma_check_fenced() { return me().mma_fenced; }

void mma_issue(float *dst, const float *values, uint32_t count) {
    // A later wgmma of the chain reads this accumulator as the pending value (mma_current).
    me().mma_open.push_back({dst, std::vector<float>(values, values + count)});
    for (uint32_t i = 0; i < count; ++i) dst[i] = std::numeric_limits<float>::quiet_NaN();
}

bool mma_current(const float *dst, float *out, uint32_t count) {
    const Fiber &f = me();
    const PendingMma *latest = nullptr;
    for (const auto &group : f.mma_groups)
        for (const PendingMma &m : group)
            if (m.dst == dst) latest = &m;
    for (const PendingMma &m : f.mma_open)
        if (m.dst == dst) latest = &m;
    if (!latest) return false;
    if (latest->values.size() != count) fail("wgmma: an accumulator pending with another shape");
    std::copy(latest->values.begin(), latest->values.end(), out);
    return true;
}

void mma_commit() {
    Fiber &f = me();
    f.mma_groups.push_back(std::move(f.mma_open));
    f.mma_open.clear();
}

void mma_wait(int pending) {
    Fiber &f = me();
    while (f.mma_groups.size() > size_t(pending)) {
        for (const PendingMma &m : f.mma_groups.front()) std::copy(m.values.begin(), m.values.end(), m.dst);
        f.mma_groups.erase(f.mma_groups.begin());
    }
    f.mma_fenced = false;
}

void async_copy(uint32_t dst, const void *src, bool valid, uint32_t bytes) {
    if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of a size other than 4, 8 or 16 bytes");
    if (dst % bytes != 0) fail("cp.async destination not aligned to its size");
    if (valid && reinterpret_cast<uintptr_t>(src) % bytes != 0) fail("cp.async source not aligned to its size");
    std::memset(shared_pointer(dst, bytes, "cp.async"), kPoisonByte, bytes);  // until it lands
    me().open_group.push_back({dst, src, valid, bytes});
}

void async_commit() {
    me().groups.push_back(std::move(me().open_group));
    me().open_group.clear();
}

void async_wait(int pending) {
    auto &groups = me().groups;
    while (groups.size() > size_t(pending)) {
        for (const Copy &c : groups.front()) land(c);
        groups.erase(groups.begin());
    }
}

namespace {

// The mbarrier at `bar`, checked: initialised, and its 8 bytes of shared memory untouched.
Mbarrier &barrier_at(uint32_t bar, const char *op) {
    if (bar % 8 != 0) fail((std::string(op) + ": mbarrier address not 8-byte aligned").c_str());
    uint64_t held;
    std::memcpy(&held, shared_pointer(bar, 8, op), 8);
    const auto found = emu->block->barriers.find(bar);
    if (found == emu->block->barriers.end()) fail((std::string(op) + " on an mbarrier never initialised").c_str());
    if (held != kMbarrierMagic) fail((std::string(op) + ": the mbarrier's shared memory was overwritten").c_str());
    return found->second;
}

// Completes the current phase of `m` if nothing more is pending: its copies land, the next
// phase begins, and the threads waiting for the completed one resume.
void settle(uint32_t bar, Mbarrier &m) {
    if (m.pending != 0 || m.tx != 0) return;
    for (const Copy &c : m.landing) land(c);
    m.landing.clear();
    ++m.phase;
    m.pending = m.expected;
    for (Fiber &f : emu->block->fibers)
        if (f.state == State::AtMbarrier && f.wait_bar == bar && f.wait_parity != (m.phase & 1)) f.state = State::Ready;
}

}  // namespace

void mbarrier_init(uint32_t bar, uint32_t count) {
    if (bar % 8 != 0) fail("mbarrier.init: address not 8-byte aligned");
    if (count == 0) fail("mbarrier.init with a count of 0");
    const auto found = emu->block->barriers.find(bar);
    if (found != emu->block->barriers.end() && !found->second.landing.empty())
        fail("mbarrier.init on an mbarrier with copies in flight");
    std::memcpy(shared_pointer(bar, 8, "mbarrier.init"), &kMbarrierMagic, 8);
    Mbarrier &m = emu->block->barriers[bar];
    m = Mbarrier{};
    m.expected = m.pending = count;
}

void mbarrier_arrive(uint32_t bar) {
    Mbarrier &m = barrier_at(bar, "mbarrier.arrive");
    if (m.pending == 0) fail("mbarrier.arrive: more arrivals in one phase than the mbarrier's count");
    --m.pending;
    const uint64_t phase = m.phase;
    settle(bar, m);
    // Where the arriving thread lets the others run: in thread order when its arrival completes
    // a phase (whoever waited for it runs next), in reverse order never (a producer runs as
    // far ahead as its waits let it), shuffled always.
    const bool completed = m.phase != phase;
    if (emu->order == 1 || (emu->order == 0 && !completed)) return;
    me().state = State::Yielded;
    yield_to_scheduler();
}

void mbarrier_expect_tx(uint32_t bar, uint32_t bytes) {
    Mbarrier &m = barrier_at(bar, "mbarrier.expect_tx");
    m.tx += bytes;
    settle(bar, m);
}

void mbarrier_wait(uint32_t bar, uint32_t parity) {
    const Mbarrier &m = barrier_at(bar, "mbarrier wait");
    if (parity > 1) fail("mbarrier wait: a parity other than 0 or 1");
    if ((m.phase & 1) != parity) return;  // that phase is the one before the current phase
    me().state = State::AtMbarrier;
    me().wait_bar = bar;
    me().wait_parity = parity;
    yield_to_scheduler();
}

void async_copies_to_mbarrier(uint32_t bar) {
    Mbarrier &m = barrier_at(bar, "cp.async.mbarrier.arrive");
    Fiber &f = me();
    for (auto &group : f.groups) m.landing.insert(m.landing.end(), group.begin(), group.end());
    m.landing.insert(m.landing.end(), f.open_group.begin(), f.open_group.end());
    f.groups.clear();
    f.open_group.clear();
}

void bulk_copy(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar) {
    Mbarrier &m = barrier_at(bar, "cp.async.bulk");
    if (dst % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
        fail("cp.async.bulk: an address not 16-byte aligned");
    if (bytes == 0 || bytes % 16 != 0) fail("cp.async.bulk: a size that is not a positive multiple of 16");
    std::memset(shared_pointer(dst, bytes, "cp.async.bulk"), kPoisonByte, bytes);  // until it lands
    m.landing.push_back({dst, src, true, bytes});
    m.tx -= bytes;
    settle(bar, m);
}

uint32_t warp_in_warpgroup(const char *op) {
    if (emu->block->fibers.size() % 128 != 0) fail((std::string(op) + " in a block that is not whole warpgroups").c_str());
    return me().linear / 32 % 4;
}

void tma_load(uint32_t dst, const void *map_ptr, const int32_t *coords, uint32_t rank, uint32_t bar) {
    const char *op = "cp.async.bulk.tensor";
    Mbarrier &m = barrier_at(bar, op);
    TfEmulatedTensorMap map;
    std::memcpy(&map, map_ptr, sizeof map);
    if (map.magic != TF_EMULATED_TENSOR_MAP_MAGIC) fail("cp.async.bulk.tensor: not a tensor map the emulator's encoder wrote");
    if (map.rank != rank) fail("cp.async.bulk.tensor: a load of another rank than its tensor map's");
    const uint32_t elem = map.element_bytes;
    const uint32_t inner = map.box[0] * elem;
    if (inner % 16 != 0) fail("cp.async.bulk.tensor: a box whose rows are not a multiple of 16 bytes");
    if (map.swizzle > 3) fail("cp.async.bulk.tensor: a swizzle mode the emulator does not model");
    const uint32_t span = map.swizzle == 0 ? 0 : 256u >> (map.swizzle == 3 ? 1 : map.swizzle == 2 ? 2 : 3);
    if (span != 0 && inner != span) fail("cp.async.bulk.tensor: a swizzled box whose rows are not the swizzle's span");
    const uint32_t pattern = span * 8;  // the swizzle pattern repeats every 8 rows
    if (dst % (span != 0 ? pattern : 16) != 0)
        fail("cp.async.bulk.tensor: a destination not aligned to its swizzle pattern (16 bytes unswizzled)");
    uint64_t elements = 1;
    for (uint32_t i = 0; i < rank; ++i) elements *= map.box[i];
    const uint32_t bytes = uint32_t(elements * elem);
    auto data = std::make_shared<std::vector<uint8_t>>(bytes, 0);
    // A box wholly outside the tensor: what it completes on the mbarrier is not specified.
    for (uint32_t i = 0; i < rank; ++i)
        if ((coords[i] >= 0 && uint64_t(coords[i]) >= map.dims[i]) || int64_t(coords[i]) + map.box[i] <= 0)
            fail("cp.async.bulk.tensor: a box wholly outside the tensor (the bytes it completes are not specified)");
    // The box packed with dimension 0 fastest; elements outside the tensor stay zero.
    for (uint64_t e = 0; e < elements; ++e) {
        uint64_t rest = e, offset = 0;
        bool inside = true;
        for (uint32_t i = 0; i < rank; ++i) {
            const int64_t c = int64_t(coords[i]) + int64_t(rest % map.box[i]);
            rest /= map.box[i];
            inside = inside && c >= 0 && uint64_t(c) < map.dims[i];
            offset += uint64_t(c) * (i == 0 ? elem : map.strides[i - 1]);
        }
        if (inside) std::memcpy(data->data() + e * elem, reinterpret_cast<const uint8_t *>(map.address) + offset, elem);
    }
    // Each 16-byte chunk lands at its swizzled place.
    for (uint32_t chunk = 0; chunk < bytes; chunk += 16) {
        const uint32_t to = swizzle_address(dst + chunk, map.swizzle == 3 ? 1 : map.swizzle == 2 ? 2 : map.swizzle == 1 ? 3 : 0);
        std::memset(shared_pointer(to, 16, op), kPoisonByte, 16);  // until it lands
        m.landing.push_back({to, data->data() + chunk, true, 16, data});
    }
    m.tx -= bytes;
    settle(bar, m);
}

const char *run(const Launch &launch, const std::function<void()> &thread) {
    static thread_local std::string error;
    Emulator state;
    state.grid = {launch.grid[0], launch.grid[1], launch.grid[2]};
    state.block_dim = {launch.block[0], launch.block[1], launch.block[2]};
    state.thread = &thread;
    state.order = launch.order;
    emu = &state;
    std::mt19937_64 rng(launch.seed);
    const uint32_t threads = launch.block[0] * launch.block[1] * launch.block[2];
    const uint64_t blocks = uint64_t(launch.grid[0]) * launch.grid[1] * launch.grid[2];
    for (uint64_t i = 0; i < blocks && !state.failed; ++i) {
        const uint64_t linear = launch.blocks_reversed ? blocks - 1 - i : i;
        const uint32_t x = linear % launch.grid[0];
        const uint32_t y = linear / launch.grid[0] % launch.grid[1];
        const uint32_t z = linear / (uint64_t(launch.grid[0]) * launch.grid[1]);
        Block b;
        b.index = {x, y, z};
        b.shared_bytes = launch.shared_bytes;
        b.shared.assign(launch.shared_bytes + kSharedGuard, kPoisonByte);
        std::fill(b.shared.begin() + launch.shared_bytes, b.shared.end(), kGuardByte);
        b.fibers.resize(threads);
        for (uint32_t t = 0; t < threads; ++t) {
            Fiber &f = b.fibers[t];
            f.stack.reset(new char[kStackBytes]);
            f.linear = t;
            f.index = {t % launch.block[0], t / launch.block[0] % launch.block[1],
                       t / (launch.block[0] * launch.block[1])};
        }
        state.block = &b;
        run_block(launch, rng);
        if (!state.failed &&
            std::any_of(b.shared.begin() + launch.shared_bytes, b.shared.end(),
                        [](uint8_t v) { return v != kGuardByte; })) {
            char where[64];
            std::snprintf(where, sizeof where, " (block %u,%u,%u)", x, y, z);
            state.error = std::string("shared memory written past its end") + where;
            state.failed = true;
        }
    }
    emu = nullptr;
    error = state.error;
    return error.c_str();
}

}  // namespace tf_emu
