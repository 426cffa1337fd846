// How the trap path enters the dispatcher and calls user handlers; shared
// by every path that runs handlers (int3 and trampoline hits in
// dispatch.cpp, returns in kretprobe.cpp).
#pragma once

#include <atomic>
#include <cstdint>

#include "core/thread_state.hpp"

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
    DispatchScope(const DispatchScope&) = delete;
    DispatchScope& operator=(const DispatchScope&) = delete;

private:
    static void bump(ThreadRecord* record) noexcept {
        auto& sequence = record->dispatch_sequence;
        sequence.store(sequence.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    ThreadRecord* record_;
};

// Calls a user handler so that a fault inside it returns here instead of
// reaching the program.  __builtin_setjmp saves only a frame and stack
// pointer: no libc, no signal mask system call (our handlers run with
// SA_NODEFER, so the mask needs no restoring).
template <class Call>
[[gnu::noinline]] bool call_guarded(ThreadRecord* record, EscapeKind kind, Call&& call) {
    EscapeKind outer = record->escape_kind;
    bool saved_armed = record->handler_escape_armed;
    // Only a nested call (an emulator access inside a handler's probe hit)
    // has an outer escape point to keep.
    void* saved_escape[5];
    if (saved_armed)
        for (int i = 0; i < 5; ++i) saved_escape[i] = record->handler_escape[i];
    bool completed = false;
    if (__builtin_setjmp(record->handler_escape) == 0) {
        record->handler_escape_armed = true;
        record->escape_kind = kind;
        call();
        completed = true;
    }
    record->escape_kind = outer;
    if (saved_armed)
        for (int i = 0; i < 5; ++i) record->handler_escape[i] = saved_escape[i];
    record->handler_escape_armed = saved_armed;
    return completed;
}

// Shows the handlers of one hit the probed context's vector registers;
// nested hits (a handler's signal hitting a probe) restore the outer view.
class VectorRegistersScope {
public:
    VectorRegistersScope(ThreadRecord* record, const std::uint8_t* base, std::uint16_t stride,
                         std::uint8_t count) noexcept
        : record_(record), base_(record->vectors), stride_(record->vector_stride), count_(record->vector_count) {
        record->vectors = base;
        record->vector_stride = stride;
        record->vector_count = count;
    }
    ~VectorRegistersScope() {
        record_->vectors = base_;
        record_->vector_stride = stride_;
        record_->vector_count = count_;
    }
    VectorRegistersScope(const VectorRegistersScope&) = delete;
    VectorRegistersScope& operator=(const VectorRegistersScope&) = delete;

private:
    ThreadRecord* record_;
    const std::uint8_t* base_;
    std::uint16_t stride_;
    std::uint8_t count_;
};

}  // namespace ukp::core
