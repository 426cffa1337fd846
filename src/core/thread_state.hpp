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
// - Return probes keep, per thread, a LIFO stack of return instances (one
//   per hijacked return address, kretprobe.cpp).  Entries are pushed from
//   the trap path, so the stack grows in chunks mapped with a raw mmap and
//   never freed; popping keeps chunks for reuse.  The chunks are private
//   anonymous memory: a fork child inherits them at the same addresses, so
//   its one thread finds its pending instances where the parent left them.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>

#include "ukprobes/kretprobe_instance.hpp"

namespace ukp::arch {
struct VectorView;
}

namespace ukp::core {

struct ProbeRecord;
struct ProbePoint;

// What a guarded call on this thread protects (handler_call.hpp): a fault
// while it runs abandons the call instead of reaching the program.
enum class EscapeKind : std::uint8_t { None, Handler, MemoryAccess };
struct ReturnProbe;  // core/kretprobe.hpp
struct ReturnStackChunk;

// One hijacked return (kernel: kretprobe_instance).  It begins with what
// the C++ front end's handlers get (ukp::KretprobeInstance: rp is the
// Kretprobe, or the struct kretprobe of a C probe; return_address the real
// one, put back on return; stack_slot where it lives on the stack; data the
// bytes right after this header), so that nothing is built for them.  Its
// first three fields and its 64-byte size are also the C API's struct
// kretprobe_instance (rp, ret_addr, fp, then data[]); kretprobe.cpp checks
// both layouts with static_assert.  `data_size` bytes of the probe's data
// follow the header.
struct ReturnInstance : ukp::KretprobeInstance {
    ReturnProbe* probe;
    ReturnInstance* below;
    ReturnStackChunk* chunk;
    std::uint32_t probe_depth;  // live instances of `probe` on this thread, this one included
    std::uint16_t landing;      // the slot holds return landing `landing - 1`; 0: the plain trampoline
    std::uint8_t armed;         // 0 until the return address is hijacked
    // Whole bytes, not bit-fields: a new header is then written without
    // reading what the memory held before.
    std::uint8_t marks;  // instance_owns_landing, instance_walk_restored

    [[nodiscard]] bool owns_landing() const noexcept { return (marks & instance_owns_landing) != 0; }
    [[nodiscard]] bool walk_restored() const noexcept { return (marks & instance_walk_restored) != 0; }

    static constexpr std::uint8_t instance_owns_landing = 1;   // took that landing (not a tail call reusing it)
    static constexpr std::uint8_t instance_walk_restored = 2;  // a stack walk has the real address in the slot
};
static_assert(sizeof(ReturnInstance) == 64);

// The per-thread LIFO of return instances.  Only the owning thread touches
// it (and, after the thread exited, whoever claims its record).
// Async-signal-safe: memory comes from raw mmap, never malloc.
// Chunks are laid out as this header, then instances, each 16-byte aligned
// (an instance's data may hold anything the user puts there).
struct ReturnStackChunk {
    ReturnStackChunk* previous;
    ReturnStackChunk* next;  // kept after popping, for reuse
    std::size_t size;        // bytes mapped, header included
    std::uint64_t reserved;
};
static_assert(sizeof(ReturnStackChunk) % 16 == 0);

class ReturnStack {
public:
    [[nodiscard]] ReturnInstance* top() const noexcept { return top_; }
    // A new instance with `data_size` bytes of data on top, its header
    // `header` but for the links; nullptr when no memory can be mapped.
    // Inline: it runs on every watched call.  Taking the header whole
    // writes each word once (zeroing it first cost a store per word more),
    // and no out-of-line call takes it, so that it is never built on the
    // stack first (that cost another store per word).
    [[nodiscard]] [[gnu::always_inline]] ReturnInstance* push(std::size_t data_size,
                                                              const ReturnInstance& header) noexcept {
        const std::size_t size = (sizeof(ReturnInstance) + data_size + 15) & ~std::size_t{15};
        if (free_ == nullptr || free_ + size > end_) [[unlikely]]
            if (!make_room(size)) return nullptr;
        return place(size, header);
    }
    // The same without mapping memory: nullptr when the current chunk is
    // full (a caller that must not make calls takes another path then).
    [[nodiscard]] [[gnu::always_inline]] ReturnInstance* push_in_chunk(std::size_t data_size,
                                                                       const ReturnInstance& header) noexcept {
        const std::size_t size = (sizeof(ReturnInstance) + data_size + 15) & ~std::size_t{15};
        if (free_ == nullptr || free_ + size > end_) [[unlikely]]
            return nullptr;
        return place(size, header);
    }
    void pop() noexcept {
        ReturnInstance* instance = top_;
        if (instance == nullptr) return;
        top_ = instance->below;
        if (instance->chunk != chunk_) [[unlikely]] {
            chunk_ = instance->chunk;
            end_ = reinterpret_cast<std::byte*>(chunk_) + chunk_->size;
        }
        free_ = reinterpret_cast<std::byte*>(instance);
    }

private:
    ReturnInstance* place(std::size_t size, ReturnInstance header) noexcept {
        header.data = free_ + sizeof(ReturnInstance);
        header.below = top_;
        header.chunk = chunk_;
        auto* instance = new (free_) ReturnInstance(header);
        free_ += size;
        top_ = instance;
        return instance;
    }
    // Moves up to a chunk (kept or new) with `size` bytes free; false when
    // no memory can be mapped.
    [[nodiscard]] bool make_room(std::size_t size) noexcept;

    ReturnInstance* top_ = nullptr;
    ReturnStackChunk* chunk_ = nullptr;  // holds the top (or is the first chunk)
    std::byte* free_ = nullptr;          // first free byte in chunk_
    std::byte* end_ = nullptr;           // chunk_'s end
};

// Releases an instance whose thread will never return through it (the
// thread exited, or its frame was unwound), on the thread that now owns the
// record with index `thread_index`; kretprobe.cpp.
void abandon_return_instance(ReturnInstance& instance, std::size_t thread_index) noexcept;

struct ThreadRecord {
    std::atomic<int> tid{0};  // 0: free
    std::size_t index = 0;    // position in the table, fixed: selects hit-counter shards
    std::atomic<std::uint64_t> dispatch_sequence{0};
    std::uint32_t dispatch_depth = 0;

    // The probe whose handler runs now on this thread (kernel: current_kprobe).
    ProbeRecord* current_probe = nullptr;
    // Where a faulting handler is abandoned to (arch::guarded_call, or a
    // trampoline's frame; 0: no guarded call runs), and what that call
    // protects (dispatch.cpp; meaningless while handler_escape is 0).
    std::uint64_t handler_escape = 0;
    EscapeKind escape_kind = EscapeKind::None;
    // The probed context's saved vector registers while its handlers run
    // (null outside handlers).
    const arch::VectorView* vector_view = nullptr;

    // Pending returns of return probes (kretprobe.cpp).
    ReturnStack return_stack;
    // This thread's block of return landings (arch/backend.hpp; -1: none
    // claimed yet, -2: none left) and how many of them are in use.
    std::int32_t landing_block = -1;
    std::uint32_t landings_used = 0;
    // While the pre-handlers of an optimized hit whose stub has the return
    // call run: its stub tag bits (arch/backend.hpp), and the instance a
    // return probe's entry hijacked there, which the hit then enters by its
    // landing call (dispatch.cpp).  0 and nullptr elsewhere.
    std::uintptr_t return_call = 0;
    ReturnInstance* return_call_instance = nullptr;
};

namespace detail {
// Static TLS (initial-exec, see CMakeLists.txt): one load from %fs.
// constinit: without it every use first tests for a TLS init function.
extern thread_local constinit ThreadRecord* this_thread;
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
