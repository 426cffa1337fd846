// Address -> ProbePoint, read lock-free from the trap path.
//
// Open addressing with linear probing.  Keys are written once and never
// change, so a reader that finds the key has found the only entry that can
// ever hold that address; removing a probe clears the value and keeps the
// key, and re-adding the address reuses the entry.  Writers are serialized
// by the registry lock.  Growing builds a new array and publishes it with
// one store; the old array is handed back to the caller to free after a
// grace period.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace ukp::core {

struct ProbePoint;

class ProbeTable {
public:
    struct Array {
        std::size_t capacity;  // a power of two
        std::size_t used = 0;  // keys set, live or not
        std::unique_ptr<std::atomic<std::uint64_t>[]> keys;
        std::unique_ptr<std::atomic<ProbePoint*>[]> values;
        explicit Array(std::size_t capacity);
    };

    ProbeTable();
    ~ProbeTable();

    // Async-signal-safe, lock-free.
    [[nodiscard]] ProbePoint* find(std::uint64_t address) const noexcept;

    // Registry lock held.  Returns the array that was replaced by growing
    // (free it after a grace period), or nullptr.
    [[nodiscard]] std::unique_ptr<Array> insert(std::uint64_t address, ProbePoint* point);
    void remove(std::uint64_t address) noexcept;

    // Registry lock held.  Visits every live point.
    template <class Visitor>
    void for_each(Visitor&& visit) const {
        const Array* array = current_.load(std::memory_order_relaxed);
        for (std::size_t i = 0; i < array->capacity; ++i)
            if (ProbePoint* point = array->values[i].load(std::memory_order_relaxed)) visit(point);
    }

private:
    std::atomic<Array*> current_;
};

}  // namespace ukp::core
