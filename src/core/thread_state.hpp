// Per-thread state: the user-space counterpart of the kernel's per-CPU
// current_kprobe and kprobe_ctlblk.  This file is the only place that holds
// per-thread state.
//
// Facts this relies on:
// - A probe's handlers run on the thread that hit it, inside our signal
//   handler.  A probe hit while a handler runs on the same thread (the
//   handler calls a probed function) must not run handlers again: its
//   nmissed grows and the instruction is executed without them.
// - Grace periods need to see every thread that may be inside the trap
//   dispatcher.  Each thread that ever traps claims a record in a global,
//   append-only table (chunks are mmap'ed and never freed, so a record
//   pointer stays valid and claiming one is async-signal-safe).  A record
//   whose thread has exited is recognised by tgkill(0) failing and is given
//   back by the grace-period code, never by the thread itself.
// - `dispatch_sequence` is even while the thread is outside the dispatcher
//   and odd inside it (only the outermost entry counts; nesting is tracked by
//   `dispatch_depth`).  A grace period that saw it odd waits until it changes.
//   Only the owning thread writes it, with plain (relaxed) stores: a locked
//   instruction would cost as much as the rest of an optimized hit.  The
//   grace period supplies the ordering instead, with
//   membarrier(PRIVATE_EXPEDITED) between unpublishing a probe and reading
//   the sequences (the asymmetric fence of liburcu's membarrier flavour).
#pragma once

#include <atomic>
#include <cstdint>

namespace ukp::core {

struct ProbeRecord;
struct ProbePoint;

struct ThreadRecord {
    std::atomic<int> tid{0};  // 0: free
    std::size_t index = 0;    // position in the table, fixed: selects hit-counter shards
    std::atomic<std::uint64_t> dispatch_sequence{0};
    std::uint32_t dispatch_depth = 0;

    // The probe whose handler runs now on this thread (kernel: current_kprobe).
    ProbeRecord* current_probe = nullptr;
    ProbePoint* current_point = nullptr;
    // Where a faulting handler is abandoned to (see dispatch.cpp).
    void* handler_escape[5] = {};
    bool handler_escape_armed = false;
};

namespace detail {
// Static TLS (initial-exec, see CMakeLists.txt): one load from %fs.
extern thread_local ThreadRecord* this_thread;
[[nodiscard]] ThreadRecord* claim_this_thread_record() noexcept;
}  // namespace detail

// This thread's record, claimed on first use.  Async-signal-safe.  Returns
// nullptr only when no memory can be mapped for a new chunk.
[[nodiscard]] inline ThreadRecord* this_thread_record() noexcept {
    ThreadRecord* record = detail::this_thread;
    return record != nullptr ? record : detail::claim_this_thread_record();
}

// This thread's record if it has one; never claims.  Async-signal-safe.
[[nodiscard]] inline ThreadRecord* this_thread_record_if_any() noexcept { return detail::this_thread; }

// Calls `visit(record)` for every claimed record.
template <class Visitor>
void for_each_thread_record(Visitor&& visit);

// Gives back records of threads that have exited.  Not async-signal-safe.
void release_exited_thread_records() noexcept;

// After fork(): the child's one thread keeps the parent's record, now under
// its own tid; every other record belongs to a thread that does not exist here.
void adopt_records_after_fork() noexcept;

namespace detail {
inline constexpr std::size_t records_per_chunk = 256;
struct ThreadChunk {
    ThreadRecord records[records_per_chunk];
    std::atomic<ThreadChunk*> next{nullptr};
};
extern std::atomic<ThreadChunk*> first_chunk;
}  // namespace detail

template <class Visitor>
void for_each_thread_record(Visitor&& visit) {
    for (auto* chunk = detail::first_chunk.load(std::memory_order_acquire); chunk;
         chunk = chunk->next.load(std::memory_order_acquire))
        for (auto& record : chunk->records)
            if (record.tid.load(std::memory_order_seq_cst) != 0) visit(record);
}

}  // namespace ukp::core
