// How the trap path enters the dispatcher and calls user handlers; shared
// by every path that runs handlers (int3 and trampoline hits in
// dispatch.cpp, returns in kretprobe.cpp).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "arch/backend.hpp"
#include "core/thread_state.hpp"
#include "ukprobes/pt_regs.h"

namespace ukp::core {

// Steps 1 and its reverse: the outermost entry and exit flip the sequence.
class DispatchScope {
public:
    // Plain stores: only this thread writes its sequence, and the grace
    // period orders them with membarrier (thread_state.hpp).  The signal
    // fences keep the compiler from moving lookups across them.
    explicit DispatchScope(ThreadRecord* record) noexcept : record_(record) {
        if (record_->dispatch_depth++ == 0) bump(record_);
        std::atomic_signal_fence(std::memory_order_seq_cst);
    }
    ~DispatchScope() { leave(); }
    void leave() noexcept {
        if (record_ == nullptr) return;
        std::atomic_signal_fence(std::memory_order_seq_cst);
        if (--record_->dispatch_depth == 0) bump(record_);
        record_ = nullptr;
    }
    // The same for a path that knows it is the outermost entry and keeps no
    // scope object (dispatch.cpp, optimized_pre_hit).
    static void enter_outermost(ThreadRecord* record) noexcept {
        record->dispatch_depth = 1;
        bump(record);
        std::atomic_signal_fence(std::memory_order_seq_cst);
    }
    static void leave_outermost(ThreadRecord* record) noexcept {
        std::atomic_signal_fence(std::memory_order_seq_cst);
        record->dispatch_depth = 0;
        bump(record);
    }
    DispatchScope(const DispatchScope&) = delete;
    DispatchScope& operator=(const DispatchScope&) = delete;

private:
    static void bump(ThreadRecord* record) noexcept {
        auto& sequence = record->dispatch_sequence;
        sequence.store(sequence.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    ThreadRecord* record_;
};

// pt_regs by quadwords: the trampoline has just stored it one quadword at a
// time, and wider (vector) loads would stall waiting for those stores.  Not
// vectorized, not turned into a memcpy call (see CMakeLists.txt), unrolled.
[[gnu::optimize("no-tree-vectorize", "unroll-loops")]] inline void copy_regs(pt_regs& to, const pt_regs& from) noexcept {
    auto* target = reinterpret_cast<std::uint64_t*>(&to);
    const auto* source = reinterpret_cast<const std::uint64_t*>(&from);
    for (std::size_t i = 0; i < sizeof(pt_regs) / sizeof(std::uint64_t); ++i) target[i] = source[i];
}

// Calls `function(first, second, third)`, a handler with the C calling
// convention and at most three pointer-sized arguments, so that a fault
// inside it returns here instead of reaching the program (arch backend,
// guarded_call).  `completed` is false when the call was abandoned; `value`
// is the handler's integer result.
inline arch::GuardedCallResult call_guarded(ThreadRecord* record, EscapeKind kind, const void* function,
                                            void* first, void* second, void* third = nullptr) {
    EscapeKind outer = record->escape_kind;
    record->escape_kind = kind;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    auto result = arch::guarded_call(&record->handler_escape, function, first, second, third);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    record->escape_kind = outer;
    return result;
}

// A common path's handler call escapes to `escape` (a trampoline's frame).
// escape_kind is read only while handler_escape is set, so the common paths
// leave it at Handler afterwards, and store it only when it is not: the hit
// paths are bound by stores.
[[gnu::always_inline]] inline void mark_handler_escape(ThreadRecord* record, std::uint64_t escape) noexcept {
    if (record->escape_kind != EscapeKind::Handler) [[unlikely]]
        record->escape_kind = EscapeKind::Handler;
    record->handler_escape = escape;
}

// The same for a callable: true when it completed.
template <class Call>
bool call_guarded(ThreadRecord* record, EscapeKind kind, Call&& call) {
    using Callable = std::remove_reference_t<Call>;
    auto invoke = +[](void* callable, void*, void*) -> int {
        (*static_cast<Callable*>(callable))();
        return 0;
    };
    return call_guarded(record, kind, reinterpret_cast<const void*>(invoke),
                        const_cast<void*>(static_cast<const void*>(std::addressof(call))), nullptr)
        .completed;
}

// Shows the handlers of one hit the probed context's vector registers;
// nested hits (a handler's signal hitting a probe) restore the outer view.
// One pointer to the hit's own view: a word saved, set and put back.
class VectorRegistersScope {
public:
    VectorRegistersScope(ThreadRecord* record, const arch::VectorView* view) noexcept
        : record_(record), outer_(record->vector_view) {
        record->vector_view = view;
    }
    ~VectorRegistersScope() { record_->vector_view = outer_; }
    VectorRegistersScope(const VectorRegistersScope&) = delete;
    VectorRegistersScope& operator=(const VectorRegistersScope&) = delete;

private:
    ThreadRecord* record_;
    const arch::VectorView* outer_;
};

}  // namespace ukp::core
