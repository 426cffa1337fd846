#include "core/probe_table.hpp"

#include <cassert>

namespace ukp::core {

namespace {
constexpr std::size_t initial_capacity = 1024;

std::size_t home_of(std::uint64_t address, std::size_t capacity) noexcept {
    // Fibonacci hashing: probe addresses share their low bits' alignment
    // patterns, the multiplier spreads them.
    return static_cast<std::size_t>((address * 0x9E3779B97F4A7C15ull) >> 20) & (capacity - 1);
}
}  // namespace

ProbeTable::Array::Array(std::size_t capacity_)
    : capacity(capacity_),
      keys(new std::atomic<std::uint64_t>[capacity_]),
      values(new std::atomic<ProbePoint*>[capacity_]) {
    for (std::size_t i = 0; i < capacity; ++i) {
        keys[i].store(0, std::memory_order_relaxed);
        values[i].store(nullptr, std::memory_order_relaxed);
    }
}

ProbeTable::ProbeTable() : current_(new Array(initial_capacity)) {}

ProbeTable::~ProbeTable() { delete current_.load(); }

ProbePoint* ProbeTable::find(std::uint64_t address) const noexcept {
    const Array* array = current_.load(std::memory_order_seq_cst);
    for (std::size_t i = home_of(address, array->capacity), n = 0; n < array->capacity;
         ++n, i = (i + 1) & (array->capacity - 1)) {
        std::uint64_t key = array->keys[i].load(std::memory_order_acquire);
        if (key == address) return array->values[i].load(std::memory_order_seq_cst);
        if (key == 0) return nullptr;
    }
    return nullptr;
}

std::unique_ptr<ProbeTable::Array> ProbeTable::insert(std::uint64_t address, ProbePoint* point) {
    assert(address != 0);
    Array* array = current_.load(std::memory_order_relaxed);
    std::unique_ptr<Array> replaced;
    // Keep the load factor under one half so that misses stay short.
    if ((array->used + 1) * 2 > array->capacity) {
        auto grown = std::make_unique<Array>(array->capacity * 2);
        for (std::size_t i = 0; i < array->capacity; ++i) {
            std::uint64_t key = array->keys[i].load(std::memory_order_relaxed);
            ProbePoint* value = array->values[i].load(std::memory_order_relaxed);
            if (key == 0 || value == nullptr) continue;
            std::size_t j = home_of(key, grown->capacity);
            while (grown->keys[j].load(std::memory_order_relaxed) != 0) j = (j + 1) & (grown->capacity - 1);
            grown->keys[j].store(key, std::memory_order_relaxed);
            grown->values[j].store(value, std::memory_order_relaxed);
            ++grown->used;
        }
        replaced.reset(array);
        array = grown.release();
        current_.store(array, std::memory_order_seq_cst);
    }
    std::size_t i = home_of(address, array->capacity);
    for (;;) {
        std::uint64_t key = array->keys[i].load(std::memory_order_relaxed);
        if (key == address) break;
        if (key == 0) {
            // Value first, then key: a reader that sees the key sees the value.
            array->values[i].store(point, std::memory_order_relaxed);
            array->keys[i].store(address, std::memory_order_release);
            ++array->used;
            return replaced;
        }
        i = (i + 1) & (array->capacity - 1);
    }
    array->values[i].store(point, std::memory_order_seq_cst);
    return replaced;
}

void ProbeTable::remove(std::uint64_t address) noexcept {
    Array* array = current_.load(std::memory_order_relaxed);
    for (std::size_t i = home_of(address, array->capacity), n = 0; n < array->capacity;
         ++n, i = (i + 1) & (array->capacity - 1)) {
        std::uint64_t key = array->keys[i].load(std::memory_order_relaxed);
        if (key == address) {
            array->values[i].store(nullptr, std::memory_order_seq_cst);
            return;
        }
        if (key == 0) return;
    }
}

}  // namespace ukp::core
