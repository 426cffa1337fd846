// Return probes (the kernel's kretprobes), generic part.
//
// A return probe is an entry probe (an ordinary ProbeRecord on the
// function's first instruction) whose pre-handler hijacks the return
// address: it pushes a ReturnInstance on the thread's return stack
// (thread_state.hpp) and replaces the return address on the stack with the
// address of the return trampoline.  The function's `ret` then lands in the
// trampoline, which calls return_probe_hit() and continues at the real
// return address with every register as the function left it.
//
// Lifetime: a ReturnProbe is what instances point at.  It is allocated by a
// front end at registration and outlives the front end's object whenever
// instances are still pending: the front end deletes it only when
// `pending` is zero, and otherwise leaks it on purpose (a few dozen bytes
// per registration that was torn down under a pending call).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/probe.hpp"
#include "core/thread_state.hpp"
#include "ukprobes/pt_regs.h"

namespace ukp::core {

struct ReturnProbe;
using ReturnHandlerFn = int (*)(ReturnProbe& probe, ReturnInstance& instance, pt_regs& regs);

// Instances of one probe alive in any thread, counted per thread record
// like ProbeRecord's hits (probe.hpp): a locked add at entry and a locked
// subtract at return cost as much as the rest of the return path.  A shard
// is written only by the thread that owns its record (or, after that
// thread exited, by the next owner, who abandons its instances), so a
// plain store does; the remover's store is a release, since it is the
// last access to the probe.  Once no new instance can be made (the entry
// probe is unregistered), shards only go down, so a sum of zero means
// every shard was zero.
struct PendingInstances {
    std::atomic<std::uint64_t> shard[hit_shards] = {};

    void add(std::size_t thread_index) noexcept {
        if (thread_index < exclusive_hit_shards) {
            auto& one = shard[thread_index];
            one.store(one.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        } else {
            shard[exclusive_hit_shards].fetch_add(1, std::memory_order_relaxed);
        }
    }
    void remove(std::size_t thread_index) noexcept {
        if (thread_index < exclusive_hit_shards) {
            auto& one = shard[thread_index];
            one.store(one.load(std::memory_order_relaxed) - 1, std::memory_order_release);
        } else {
            shard[exclusive_hit_shards].fetch_sub(1, std::memory_order_release);
        }
    }
    [[nodiscard]] std::uint64_t load() const noexcept {
        std::uint64_t total = 0;
        for (const auto& one : shard) total += one.load(std::memory_order_acquire);
        return total;
    }
};

struct ReturnProbe {
    // Set by the front end before registration, constant while registered.
    ReturnHandlerFn entry_handler = nullptr;
    ReturnHandlerFn return_handler = nullptr;
    void* front_end = nullptr;     // the Kretprobe or struct kretprobe
    std::size_t data_size = 0;
    std::uint32_t maxactive = 0;   // live instances per thread, > 0
    int* mirror_nmissed = nullptr; // the C struct's nmissed field, kept equal

    // Set by unregistration: pending instances still return correctly, but
    // their handler is not called (kernel semantics).
    std::atomic<bool> gone{false};
    std::atomic<std::uint64_t> nmissed{0};     // maxactive reached, or no memory
    std::atomic<std::uint64_t> nabandoned{0};  // instances whose frame was left without return
    PendingInstances pending;                  // instances on any thread's stack, armed or not

    void count_miss() noexcept {
        nmissed.fetch_add(1, std::memory_order_relaxed);
        if (mirror_nmissed) std::atomic_ref<int>(*mirror_nmissed).fetch_add(1, std::memory_order_relaxed);
    }
};

// maxactive <= 0 means this many live instances per thread.
inline constexpr std::uint32_t default_maxactive = 64;

// The entry probe's pre-handler, as an engine pre-handler whose record's
// handler_data is the ReturnProbe (both front ends' entry records call it
// directly, with no thunk between): always returns 0 (the function runs).
int return_probe_pre_handler(ProbeRecord& entry, pt_regs& regs) noexcept;
// The same for the common case of an optimized hit whose stub has the
// return call (dispatch.cpp): returns the instance it hijacked with a
// landing, or nullptr, and leaves that landing's way into the trampoline
// to the caller, which enters the function by the landing's call.
ReturnInstance* return_probe_entry_by_landing_call(ReturnProbe& probe, pt_regs& regs) noexcept;

// Unregistration's second half, after the entry probe is unregistered:
// marks the probe gone and waits until no thread runs its return handler.
void retire_return_probe(ReturnProbe& probe) noexcept;

// Deletes `probe` if no instance refers to it, else leaves it (see above).
void release_return_probe(ReturnProbe* probe) noexcept;

}  // namespace ukp::core
