// Out-of-line (XOL) slots: where a probed instruction runs after its handlers.
//
// Slots live in areas of executable memory mapped within +-2 GiB of the code
// they serve, because the copy reaches back with rel32 jumps and rebased
// RIP-relative operands.  Areas are never unmapped: a thread may be inside a
// slot long after its probe is gone, and a retired slot is only handed out
// again once a grace period proves no thread is in it (grace_period.cpp).
// Slots are written through os::CodeWriter, never through a writable mapping.
//
// The trap path maps an address back to its slot's owner lock-free: areas
// are published in an append-only array, owners are atomics.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "ukprobes/error.hpp"

namespace ukp::core {

struct ProbePoint;

class SlotAllocator {
public:
    // Registry lock held.  A free slot whose every byte is within rel32 reach
    // of [near_start, near_end).
    [[nodiscard]] Result<std::uint64_t> allocate(std::uint64_t near_start, std::uint64_t near_end);
    // Registry lock held.  Only after a grace period.
    void release(std::uint64_t slot) noexcept;

    void set_owner(std::uint64_t slot, ProbePoint* owner) noexcept;

    // Async-signal-safe: the owner of the slot holding `pc`, and the slot's
    // start; nullptr when `pc` is in no slot.
    [[nodiscard]] ProbePoint* owner_of(std::uint64_t pc, std::uint64_t* slot) const noexcept;

private:
    static constexpr std::size_t max_areas = 4096;
    struct Area {
        std::uint64_t base = 0;
        std::size_t slot_count = 0;
        std::unique_ptr<std::atomic<ProbePoint*>[]> owners;
        std::vector<std::uint32_t> free_slots;  // registry lock
    };
    std::atomic<Area*> areas_[max_areas] = {};
    std::atomic<std::size_t> area_count_{0};
    // Every area before this index is full (registry lock): a batch of
    // thousands of probes would otherwise walk all the full areas per slot.
    std::size_t first_with_free_ = 0;

    [[nodiscard]] Area* area_of(std::uint64_t pc) const noexcept;
    [[nodiscard]] std::size_t index_of(std::uint64_t pc) const noexcept;  // area_count_ when none
};

}  // namespace ukp::core
