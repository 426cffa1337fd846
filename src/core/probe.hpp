// The engine's view of probes.
//
// A ProbeRecord is one registered probe as the user sees it (a ukp::Kprobe or
// a C struct kprobe); the front ends give it their handlers as plain function
// pointers.  A ProbePoint is one probed address: the kernel's aggregate
// probe.  Several records may share a point; the point owns the out-of-line
// slot and the original bytes.
//
// What readers on the trap path may touch, and what protects it:
// - ProbePoint fields other than `handlers` never change after the point is
//   published in the table; the point is freed only after a grace period.
// - `handlers` is an immutable list, replaced whole under the registry lock
//   and freed after a grace period (read-copy-update).
// - ProbeRecord counters are atomics; `enabled` is read with relaxed order
//   (a hit racing with enable/disable may go either way, as in the kernel).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "arch/backend.hpp"
#include "ukprobes/pt_regs.h"

namespace ukp::core {

struct ProbeRecord;
struct ProbePoint;

using PreHandlerFn = int (*)(ProbeRecord& probe, pt_regs& regs);
using PostHandlerFn = void (*)(ProbeRecord& probe, pt_regs& regs, unsigned long flags);
using FaultHandlerFn = int (*)(ProbeRecord& probe, pt_regs& regs, int trap_number);

// nhit is bumped on every hit, on every thread: a locked add costs as much
// as the rest of an optimized hit.  Threads whose record index is below
// exclusive_hit_shards each own one shard and add without a lock; the rest
// share the last shard with a locked add.  Reading sums the shards.
inline constexpr std::size_t hit_shards = 64;
inline constexpr std::size_t exclusive_hit_shards = hit_shards - 1;

struct ProbeRecord {
    // Set by the front end before registration.
    PreHandlerFn pre_handler = nullptr;
    PostHandlerFn post_handler = nullptr;
    FaultHandlerFn fault_handler = nullptr;
    void* front_end = nullptr;            // the Kprobe or struct kprobe behind this record
    void* handler_data = nullptr;         // for a pre_handler of the engine's own (return probes' entry)
    unsigned long* mirror_nmissed = nullptr;  // the C struct's nmissed field, kept equal

    bool no_optimize = false;  // UKP_NO_OPTIMIZE: keep the int3 path
    bool return_entry = false;  // a return probe's entry (its stub gets the return call, arch/backend.hpp)

    std::atomic<bool> enabled{true};
    std::atomic<std::uint64_t> hit_shard[hit_shards] = {};
    std::atomic<std::uint64_t> nmissed{0};
    std::atomic<std::uint64_t> nfault{0};
    std::atomic<bool> fault_reported{false};

    // Owned by the registry (under its lock).
    ProbePoint* point = nullptr;
    std::uint64_t address = 0;
    std::string where;  // "symbol+0x4 [module]", filled when first listed

    void count_hit(std::size_t thread_index) noexcept {
        if (thread_index < exclusive_hit_shards) {
            auto& shard = hit_shard[thread_index];
            shard.store(shard.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        } else {
            hit_shard[exclusive_hit_shards].fetch_add(1, std::memory_order_relaxed);
        }
    }
    [[nodiscard]] std::uint64_t nhit() const noexcept {
        std::uint64_t total = 0;
        for (const auto& shard : hit_shard) total += shard.load(std::memory_order_relaxed);
        return total;
    }

    void count_miss() noexcept {
        nmissed.fetch_add(1, std::memory_order_relaxed);
        if (mirror_nmissed) std::atomic_ref<unsigned long>(*mirror_nmissed).fetch_add(1, std::memory_order_relaxed);
    }
};

struct HandlerList {
    std::vector<ProbeRecord*> probes;
    bool has_post_handler = false;
    // The one record, when there is exactly one and it has a pre-handler:
    // the optimized path's fast case (dispatch.cpp).
    ProbeRecord* only_pre = nullptr;
    bool has_return_entry = false;
};

// Optimization of a point, read by the trap path:
//   None       int3 path only.
//   Pending    the trampoline is ready; a thread that hits the int3 is sent
//              to it (it runs the handlers and the whole displaced region),
//              so no thread enters the region's interior any more.
//   Optimized  the jump to the trampoline is written.
enum class Optimization : std::uint8_t { None, Pending, Optimized };

struct ProbePoint {
    std::uint64_t address = 0;
    std::array<std::uint8_t, arch::max_insn_length> original{};  // the instruction's bytes before we armed
    arch::PreparedInsn insn{};
    std::uint64_t slot = 0;  // out-of-line slot address
    std::atomic<const HandlerList*> handlers{nullptr};
    bool armed = false;  // registry lock

    std::atomic<Optimization> optimization{Optimization::None};
    // The stub's slot.  Read by the trap path after it saw a state other than
    // None, so it is never cleared: after unoptimizing it still names the
    // retired stub, which lives until a grace period proves no thread uses it.
    std::atomic<std::uint64_t> trampoline{0};
    arch::OptimizedRegion optimized{};  // valid while not None
    // Optimized, and a batch queued the removal of its jump (registry lock).
    bool removing_jump = false;
    std::string not_optimized;          // why not, for listings (registry lock)
};

}  // namespace ukp::core
