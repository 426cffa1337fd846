#include "core/xol_slots.hpp"

#include <algorithm>
#include <memory>

#include "arch/backend.hpp"
#include "os/linux/memory.hpp"

namespace ukp::core {

namespace {
constexpr std::size_t area_size = 64 * 1024;
// rel32 reaches +-2 GiB; keep a margin for the instruction lengths involved.
constexpr std::uint64_t reach = (1ull << 31) - 4096;

bool within_reach(std::uint64_t slot, std::uint64_t near_start, std::uint64_t near_end) {
    std::uint64_t slot_end = slot + arch::slot_size;
    std::uint64_t far_low = std::min(slot, near_start);
    std::uint64_t far_high = std::max(slot_end, near_end);
    return far_high - far_low < reach;
}
}  // namespace

Result<std::uint64_t> SlotAllocator::allocate(std::uint64_t near_start, std::uint64_t near_end) {
    std::size_t count = area_count_.load(std::memory_order_relaxed);
    while (first_with_free_ < count && areas_[first_with_free_].load(std::memory_order_relaxed)->free_slots.empty())
        ++first_with_free_;
    for (std::size_t i = first_with_free_; i < count; ++i) {
        Area* area = areas_[i].load(std::memory_order_relaxed);
        if (area->free_slots.empty()) continue;
        // Slots of one area are all within reach iff its two ends are.
        if (!within_reach(area->base, near_start, near_end) ||
            !within_reach(area->base + area_size - arch::slot_size, near_start, near_end))
            continue;
        std::uint32_t index = area->free_slots.back();
        area->free_slots.pop_back();
        return area->base + index * arch::slot_size;
    }
    if (count == max_areas) return make_error(Errc::NoMemory, "all out-of-line slot areas are in use");

    auto base = os::map_code_near(near_start, near_end, area_size);
    if (!base) return std::unexpected(base.error());
    auto area = std::make_unique<Area>();
    area->base = *base;
    area->slot_count = area_size / arch::slot_size;
    area->owners.reset(new std::atomic<ProbePoint*>[area->slot_count]);
    for (std::size_t i = 0; i < area->slot_count; ++i) area->owners[i].store(nullptr, std::memory_order_relaxed);
    // Hand out from the bottom up: pop_back takes the last element.
    for (std::size_t i = area->slot_count; i-- > 1;) area->free_slots.push_back(static_cast<std::uint32_t>(i));
    areas_[count].store(area.release(), std::memory_order_release);
    area_count_.store(count + 1, std::memory_order_release);
    return *base;  // slot 0
}

void SlotAllocator::release(std::uint64_t slot) noexcept {
    std::size_t area_index = index_of(slot);
    if (area_index == area_count_.load(std::memory_order_relaxed)) return;
    Area* area = areas_[area_index].load(std::memory_order_relaxed);
    std::size_t index = (slot - area->base) / arch::slot_size;
    area->owners[index].store(nullptr, std::memory_order_release);
    area->free_slots.push_back(static_cast<std::uint32_t>(index));
    first_with_free_ = std::min(first_with_free_, area_index);
}

void SlotAllocator::set_owner(std::uint64_t slot, ProbePoint* owner) noexcept {
    Area* area = area_of(slot);
    if (area == nullptr) return;
    area->owners[(slot - area->base) / arch::slot_size].store(owner, std::memory_order_release);
}

std::size_t SlotAllocator::index_of(std::uint64_t pc) const noexcept {
    std::size_t count = area_count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < count; ++i) {
        Area* area = areas_[i].load(std::memory_order_acquire);
        if (pc >= area->base && pc < area->base + area_size) return i;
    }
    return count;
}

SlotAllocator::Area* SlotAllocator::area_of(std::uint64_t pc) const noexcept {
    std::size_t count = area_count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < count; ++i) {
        Area* area = areas_[i].load(std::memory_order_acquire);
        if (pc >= area->base && pc < area->base + area_size) return area;
    }
    return nullptr;
}

ProbePoint* SlotAllocator::owner_of(std::uint64_t pc, std::uint64_t* slot) const noexcept {
    Area* area = area_of(pc);
    if (area == nullptr) return nullptr;
    std::size_t index = (pc - area->base) / arch::slot_size;
    if (slot) *slot = area->base + index * arch::slot_size;
    return area->owners[index].load(std::memory_order_acquire);
}


}  // namespace ukp::core
