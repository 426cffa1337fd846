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

struct ProbeRecord {
    // Set by the front end before registration.
    PreHandlerFn pre_handler = nullptr;
    PostHandlerFn post_handler = nullptr;
    FaultHandlerFn fault_handler = nullptr;
    void* front_end = nullptr;            // the Kprobe or struct kprobe behind this record
    unsigned long* mirror_nmissed = nullptr;  // the C struct's nmissed field, kept equal

    std::atomic<bool> enabled{true};
    std::atomic<std::uint64_t> nhit{0};
    std::atomic<std::uint64_t> nmissed{0};
    std::atomic<std::uint64_t> nfault{0};
    std::atomic<bool> fault_reported{false};

    // Owned by the registry (under its lock).
    ProbePoint* point = nullptr;
    std::uint64_t address = 0;
    std::string where;  // "symbol+0x4 [module]" for listings and messages

    void count_miss() noexcept {
        nmissed.fetch_add(1, std::memory_order_relaxed);
        if (mirror_nmissed) std::atomic_ref<unsigned long>(*mirror_nmissed).fetch_add(1, std::memory_order_relaxed);
    }
};

struct HandlerList {
    std::vector<ProbeRecord*> probes;
    bool has_post_handler = false;
};

struct ProbePoint {
    std::uint64_t address = 0;
    std::array<std::uint8_t, arch::max_insn_length> original{};  // bytes before we armed
    arch::PreparedInsn insn{};
    std::uint64_t slot = 0;  // out-of-line slot address
    std::atomic<const HandlerList*> handlers{nullptr};
    bool armed = false;  // registry lock
};

}  // namespace ukp::core
