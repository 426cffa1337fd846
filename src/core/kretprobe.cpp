// Return probes: the generic engine part, the C++ front end (ukp::Kretprobe)
// and the kernel-compatible C front end (struct kretprobe), plus the
// interposers that keep unwinding working.  See core/kretprobe.hpp for the
// mechanism and the lifetime of a ReturnProbe.
//
// Entry, in the entry probe's pre-handler (a trap or an optimized
// trampoline; handlers of other probes hit on this thread meanwhile are
// missed, so the thread's return stack is never reentered):
//   1. Drop this thread's instances whose frames are gone: their slot lies
//      below the new one (longjmp and friends unwound them), or equals it
//      while the word there is not the trampoline (the frame was unwound and
//      the same call site called again).
//   2. When this probe has maxactive live instances on this thread, count a
//      miss and leave the function alone.
//   3. Push an instance; run the entry handler, which may fill its data;
//      non-zero from it pops the instance again (kernel semantics).
//   4. Hijack: the slot gets one of this thread's return landings (an
//      address that unwinders can pass, arch/backend.hpp), or the
//      trampoline's address when none is free.  When the slot held a landing
//      or the trampoline already (a tail call from another return-probed
//      function), the real return address is the one of the instance below,
//      and the slot keeps its word.  In an optimized hit whose stub has the
//      return call, the instance is handed to the dispatcher, which enters
//      the function by the landing's call (dispatch.cpp).
//
// Return, in ukp_return_probe_hit (called by the trampoline):
//   1. Drop instances deeper than the slot (abandoned).
//   2. Every instance on this slot, top first (more than one after tail
//      calls): regs.ip = the real return address, run the return handler
//      unless the probe is gone, pop.
//   3. Return the real return address to the trampoline.
//   No instance for the slot means our bookkeeping is broken: abort with a
//   message rather than jump somewhere.
//
// Unregistration (retire_return_probe), numbered like the grace periods:
//   1. Unregister the entry probe: no new instances once it returns.
//   2. Set `gone`.
//   3. wait_for_dispatchers(): the return path enters the dispatcher (odd
//      sequence) before it reads `gone` and leaves it after the handler, so
//      after the wait no thread runs or will run the handler.  Then the
//      front end's object may go; instances keep the ReturnProbe alive.
//
// What unwinding does to hijacked returns:
//   - longjmp, siglongjmp, swapcontext back to an older frame: the
//     instances stay on the stack until step 1 of the next entry or return
//     drops them (counted in nabandoned).  A slot is never written after its
//     frame is gone.
//   - C++ exceptions: the unwinder must never see the trampoline as a return
//     address.  _Unwind_RaiseException and _Unwind_Resume_or_Rethrow are
//     interposed: before the real one runs, every live slot of this thread
//     gets its real return address back and every instance is dropped
//     (nabandoned).  The frames the exception leaves run no return handler
//     (the kernel has no exceptions to follow); neither do frames it passes
//     by if a handler below them catches it.
//   - pthread_exit: interposed the same way before glibc's forced unwind.
//   - pthread_cancel is NOT handled: glibc's cancellation unwinds through a
//     libgcc pointer that cannot be interposed.  Revisit.
// Assumption to revisit: instances are ordered by stack address, which a
// handler on an alternate signal stack placed above the thread's stack, or
// coroutines with their own stacks, break.
#include "core/kretprobe.hpp"
#include "core/handler_call.hpp"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unwind.h>

#include <cstring>
#include <new>

#include "core/engine.hpp"
#include "core/front_end.hpp"
#include "os/linux/raw_syscall.hpp"
#include "ukprobes/kprobes.h"
#include "ukprobes/ukprobes.hpp"

#define UKP_API __attribute__((visibility("default")))

namespace ukp::core {

namespace {

// Marks the thread as running a probe handler while the return path works
// on its return stack: a probe hit meanwhile (a signal handler calling a
// probed function) is missed instead of reentering.  Never dereferenced.
ProbeRecord return_path_marker;

[[noreturn]] void fatal(const char* text) noexcept { os::abort_with_message(text); }

// The return path enters the dispatcher (grace periods see it) and counts as
// a running handler: a probe hit meanwhile, say by a signal handler calling a
// probed function, is missed rather than reentering the return stack.
class ReturnPathScope {
public:
    explicit ReturnPathScope(ThreadRecord* record) noexcept
        : scope_(record), record_(record), saved_probe_(record->current_probe) {
        record_->current_probe = &return_path_marker;
    }
    ~ReturnPathScope() {
        record_->current_probe = saved_probe_;
    }
    ReturnPathScope(const ReturnPathScope&) = delete;
    ReturnPathScope& operator=(const ReturnPathScope&) = delete;

private:
    DispatchScope scope_;  // declared first: left last
    ThreadRecord* record_;
    ProbeRecord* saved_probe_;
};

// What the hijacked slot of `instance` holds.
std::uint64_t hijack_word(const ReturnInstance& instance) noexcept {
    return instance.landing != 0 ? arch::return_landing_address(instance.landing - 1)
                                 : arch::return_trampoline_address();
}

// Landings are taken and given back in stack order: an instance that owns
// one is above every older owner.
void give_back_landing(ThreadRecord& record, const ReturnInstance& instance) noexcept {
    if (instance.owns_landing()) --record.landings_used;
}

// Pops the top instance for good.  `pending` (which counts every instance
// on a stack, armed or not) is the last access to the probe: after it, its
// owner may delete it.
[[gnu::always_inline]] inline void release_top(ThreadRecord& record) noexcept {
    auto& stack = record.return_stack;
    ReturnProbe* probe = stack.top()->probe;
    give_back_landing(record, *stack.top());
    stack.pop();
    probe->pending.remove(record.index);
}

void drop_top_abandoned(ThreadRecord& record) noexcept {
    auto& stack = record.return_stack;
    ReturnInstance* instance = stack.top();
    if (instance->armed) {
        instance->probe->nabandoned.fetch_add(1, std::memory_order_relaxed);
        release_top(record);
    } else {
        // An entry handler faulted before the hijack: not an abandoned call.
        ReturnProbe* probe = instance->probe;
        stack.pop();
        probe->pending.remove(record.index);
    }
}

std::uint32_t live_instances(const ReturnStack& stack, const ReturnProbe& probe) noexcept {
    for (ReturnInstance* instance = stack.top(); instance; instance = instance->below)
        if (instance->probe == &probe && instance->armed) return instance->probe_depth;
    return 0;
}

// Gives every live slot of this thread its real return address back and
// drops every instance (before an unwinder walks the stack).
void unhook_this_thread() noexcept {
    ThreadRecord* record = this_thread_record_if_any();
    if (record == nullptr || record->return_stack.top() == nullptr) return;
    ReturnPathScope scope(record);
    // Slots below our own frame belong to frames that are gone already.
    const auto here = reinterpret_cast<std::uint64_t>(__builtin_frame_address(0));
    auto& stack = record->return_stack;
    while (ReturnInstance* instance = stack.top()) {
        auto* word = reinterpret_cast<std::uint64_t*>(instance->stack_slot);
        if (instance->armed && instance->stack_slot > here && *word == hijack_word(*instance))
            *word = instance->return_address;
        drop_top_abandoned(*record);
    }
}

}  // namespace

void abandon_return_instance(ReturnInstance& instance, std::size_t thread_index) noexcept {
    if (instance.armed) instance.probe->nabandoned.fetch_add(1, std::memory_order_relaxed);
    instance.probe->pending.remove(thread_index);
}

namespace {

// A new instance's header, unarmed (the stack fills in the links).
// `landing`: as ReturnInstance::landing, the one it will take (and own)
// when armed; 0: none, or not known yet.  It means nothing before.
[[gnu::always_inline]] inline ReturnInstance instance_header(ReturnProbe& probe, std::uint64_t return_address,
                                                             std::uint64_t slot, std::uint32_t depth,
                                                             std::uint16_t landing = 0) noexcept {
    // rp holds the front end's object, a struct kretprobe for a C probe
    // (whose handlers see it through struct kretprobe_instance's rp).
    return ReturnInstance{{.rp = static_cast<ukp::Kretprobe*>(probe.front_end),
                           .return_address = return_address,
                           .stack_slot = slot,
                           .data = nullptr},
                          /*probe=*/&probe,
                          /*below=*/nullptr,
                          /*chunk=*/nullptr,
                          /*probe_depth=*/depth,
                          /*landing=*/landing,
                          /*armed=*/0,
                          /*marks=*/landing != 0 ? ReturnInstance::instance_owns_landing : std::uint8_t{0}};
}

// Landing `index`'s word for `instance`'s slot.  In an optimized hit whose
// stub has the return call (`by_landing_call`), the dispatcher enters the
// function by the landing's call and sets the landing's way into the
// trampoline on every way out of the hit (leave_by_return_call); elsewhere
// it is set here.  The narrow trampoline (return values only) only when the
// optimized entry knows no caller relies on more (arch/backend.hpp).
[[gnu::always_inline]] inline std::uint64_t hijack_with_landing(const ReturnInstance* instance, std::size_t index,
                                                                bool by_landing_call) noexcept {
    if (by_landing_call) return arch::return_landing_target(index, instance->return_address);
    return arch::return_landing(index, instance->return_address, false);
}

// Returns the instance it hijacked with a landing when `by_landing_call`
// (see hijack_with_landing), else nullptr.
[[gnu::noinline]] ReturnInstance* return_probe_entry_in_general(ThreadRecord* record, ReturnProbe& probe,
                                                                pt_regs& regs, bool by_landing_call) noexcept {
    auto& stack = record->return_stack;
    const std::uint64_t slot = arch::return_address_slot_at_entry(regs);
    auto* word = reinterpret_cast<std::uint64_t*>(slot);
    const bool tail_called = arch::is_return_hijack(*word);

    // Step 1.
    while (ReturnInstance* top = stack.top()) {
        if (!top->armed || top->stack_slot < slot || (top->stack_slot == slot && !tail_called))
            drop_top_abandoned(*record);
        else
            break;
    }
    std::uint64_t return_address = *word;
    std::uint32_t landing = 0;
    if (tail_called) {
        ReturnInstance* top = stack.top();
        if (top == nullptr || top->stack_slot != slot) {
            // Not ours to follow (cannot happen unless the stack was corrupted).
            probe.count_miss();
            return nullptr;
        }
        return_address = top->return_address;
        landing = top->landing;
    }
    // Step 2.
    const std::uint32_t live = live_instances(stack, probe);
    if (live >= probe.maxactive) {
        probe.count_miss();
        return nullptr;
    }
    // Step 3.
    ReturnInstance* instance =
        stack.push(probe.data_size, instance_header(probe, return_address, slot, live + 1));
    if (instance == nullptr) {
        probe.count_miss();
        return nullptr;
    }
    probe.pending.add(record->index);
    if (probe.entry_handler != nullptr && probe.entry_handler(probe, *instance, regs) != 0) {
        stack.pop();
        probe.pending.remove(record->index);
        return nullptr;
    }
    // Step 4: a landing of this thread's block when one is free, so that
    // unwinders can pass the slot (arch/backend.hpp), else the trampoline.
    instance->armed = 1;
    if (!tail_called) {
        if (record->landing_block == -1) {
            std::int32_t block = arch::claim_return_landing_block();
            record->landing_block = block < 0 ? -2 : block;
        }
        if (record->landing_block >= 0 && record->landings_used < arch::return_landings_per_block) {
            std::size_t index = static_cast<std::size_t>(record->landing_block) * arch::return_landings_per_block +
                                record->landings_used++;
            instance->landing = static_cast<std::uint16_t>(index + 1);
            instance->marks = ReturnInstance::instance_owns_landing;
            *word = hijack_with_landing(instance, index, by_landing_call);
            return by_landing_call ? instance : nullptr;
        }
        *word = arch::return_trampoline_address();
    } else {
        instance->landing = static_cast<std::uint16_t>(landing);
    }
    return nullptr;
}

// Step 4 of the common case: the instance on top's header names the
// thread's next landing already (see the general path).  A function of its
// own, reached by a tail call, that finds the record and the instance
// itself: nothing before it then needs keeping across the entry handler's
// call (GCC would keep it in callee-saved registers: five pushes and pops).
[[gnu::noinline]] ReturnInstance* arm_top_with_next_landing(bool by_landing_call) noexcept {
    ThreadRecord* record = this_thread_record_if_any();
    ReturnInstance* instance = record->return_stack.top();
    instance->armed = 1;
    ++record->landings_used;
    *reinterpret_cast<std::uint64_t*>(instance->stack_slot) =
        hijack_with_landing(instance, instance->landing - 1, by_landing_call);
    return by_landing_call ? instance : nullptr;
}

// Step 3's pop after an entry handler returned non-zero (see
// arm_top_with_next_landing).
[[gnu::noinline]] ReturnInstance* skip_top() noexcept {
    ThreadRecord* record = this_thread_record_if_any();
    ReturnProbe* probe = record->return_stack.top()->probe;
    record->return_stack.pop();
    probe->pending.remove(record->index);
    return nullptr;
}

// The common case on its own: no tail call, nothing to drop, a free landing
// in the thread's block.  Everything else is a tail call to the general
// path, and everything needed after the entry handler is found again
// (the instance is on top), so that nothing is live across that call.
// Returns what return_probe_entry_in_general does.
[[gnu::always_inline]] inline ReturnInstance* return_probe_entry_inline(ReturnProbe& probe, pt_regs& regs,
                                                                        bool by_landing_call) noexcept {
    ThreadRecord* record = this_thread_record_if_any();
    if (record == nullptr) return nullptr;  // cannot be: the dispatcher claimed it
    auto& stack = record->return_stack;
    const std::uint64_t slot = arch::return_address_slot_at_entry(regs);
    const std::uint64_t return_address = *reinterpret_cast<const std::uint64_t*>(slot);
    const ReturnInstance* top = stack.top();
    if (arch::is_return_hijack(return_address) || (top != nullptr && (!top->armed || top->stack_slot <= slot)) ||
        record->landing_block < 0 || record->landings_used >= arch::return_landings_per_block) [[unlikely]]
        return return_probe_entry_in_general(record, probe, regs, by_landing_call);
    const std::uint32_t live = live_instances(stack, probe);
    ReturnInstance* instance = nullptr;
    const auto landing = static_cast<std::uint16_t>(
        static_cast<std::size_t>(record->landing_block) * arch::return_landings_per_block + record->landings_used + 1);
    if (live < probe.maxactive) [[likely]]
        instance = stack.push_in_chunk(probe.data_size,
                                       instance_header(probe, return_address, slot, live + 1, landing));
    if (instance == nullptr) [[unlikely]]  // a miss, or a new chunk to map
        return return_probe_entry_in_general(record, probe, regs, by_landing_call);
    probe.pending.add(record->index);
    if (probe.entry_handler != nullptr && probe.entry_handler(probe, *instance, regs) != 0) return skip_top();
    return arm_top_with_next_landing(by_landing_call);
}

// An entry outside the dispatcher's common case of a return-call stub: in
// an optimized hit whose stub has the return call, the instance goes to the
// dispatcher through the record (optimized_pre_hit_return_call_in_general).
int entry_through_the_record(ReturnProbe& probe, pt_regs& regs) noexcept {
    const ThreadRecord* record = this_thread_record_if_any();
    if (record == nullptr) return 0;  // cannot be: the dispatcher claimed it
    if (ReturnInstance* instance = return_probe_entry_inline(probe, regs, record->return_call != 0))
        this_thread_record_if_any()->return_call_instance = instance;
    return 0;
}

}  // namespace

int return_probe_pre_handler(ProbeRecord& entry, pt_regs& regs) noexcept {
    return entry_through_the_record(*static_cast<ReturnProbe*>(entry.handler_data), regs);
}

ReturnInstance* return_probe_entry_by_landing_call(ReturnProbe& probe, pt_regs& regs) noexcept {
    return return_probe_entry_inline(probe, regs, true);
}

void retire_return_probe(ReturnProbe& probe) noexcept {
    probe.gone.store(true, std::memory_order_seq_cst);
    if (!called_from_handler()) wait_for_dispatchers();
}

void release_return_probe(ReturnProbe* probe) noexcept {
    if (probe != nullptr && probe->pending.load() == 0) delete probe;
}

}  // namespace ukp::core

using namespace ukp;
using namespace ukp::core;

namespace {

// Step 1: drop what was abandoned above the slot; the top instance must
// then be the slot's.
[[gnu::noinline]] ReturnInstance* drop_to_slot(ThreadRecord* record, std::uint64_t slot) {
    auto& stack = record->return_stack;
    while (stack.top() != nullptr && stack.top()->stack_slot < slot) drop_top_abandoned(*record);
    ReturnInstance* instance = stack.top();
    if (instance == nullptr || instance->stack_slot != slot || !instance->armed)
        fatal("ukprobes: a return probe's trampoline found no instance for its stack slot; aborting\n");
    return instance;
}

// Step 2 for every instance on the slot (tail calls stack several there),
// each return-handler call guarded on its own.
[[gnu::noinline]] std::uint64_t return_through_instances(ThreadRecord* record, pt_regs* regs, pt_regs* backup,
                                                         std::uint64_t slot) {
    auto& stack = record->return_stack;
    ReturnInstance* instance = nullptr;
    std::uint64_t return_address = 0;
    bool backup_is_current = true;
    // The trampoline wrote only (some of) the general registers into the
    // backup, and no handler has run yet.
    copy_regs(*backup, *regs);
    while ((instance = stack.top()) != nullptr && instance->stack_slot == slot && instance->armed) {
        return_address = instance->return_address;
        regs->ip = return_address;
        ReturnProbe* probe = instance->probe;
        if (probe->return_handler != nullptr && !probe->gone.load(std::memory_order_relaxed)) {
            std::uint64_t sp = regs->sp;
            // Guarded like every handler: a fault abandons the call (see
            // dispatch.cpp for the policy) as if it changed nothing, and the
            // return still completes.  The trampoline saved the registers
            // twice; after a handler that completed, the copy is renewed.
            if (!backup_is_current) copy_regs(*backup, *regs);
            backup->ip = return_address;
            if (call_guarded(record, EscapeKind::Handler, reinterpret_cast<const void*>(probe->return_handler), probe,
                             instance, regs)
                    .completed)
                backup_is_current = false;
            else
                copy_regs(*regs, *backup);
            regs->sp = sp;  // the trampoline returns with the stack as it is
        }
        release_top(*record);
    }
    // Step 3.
    return return_address;
}

// A return while the thread runs a handler or the dispatcher (a probed
// function called by a handler): the state it finds is not the outermost
// one the common case restores, so every call is guarded on its own.
[[gnu::noinline]] std::uint64_t return_probe_hit_nested(ThreadRecord* record, pt_regs* regs, pt_regs* backup) {
    ReturnPathScope scope(record);
    const std::uint64_t slot = arch::return_address_slot_at_return(*regs);
    (void)drop_to_slot(record, slot);
    return return_through_instances(record, regs, backup, slot);
}

// What the common case takes back: the state of a thread outside the
// dispatcher, which is what it started from.
inline void finish_outermost_return(ThreadRecord* record) noexcept {
    record->current_probe = nullptr;
    DispatchScope::leave_outermost(record);
}

// An outermost return that is not the common case: abandoned instances
// above the slot, or several on it (tail calls).
[[gnu::noinline]] std::uint64_t return_probe_hit_outermost(ThreadRecord* record, pt_regs* regs, pt_regs* backup) {
    // As ReturnPathScope, for the outermost entry.
    DispatchScope::enter_outermost(record);
    record->current_probe = &return_path_marker;
    const std::uint64_t slot = arch::return_address_slot_at_return(*regs);
    (void)drop_to_slot(record, slot);
    const std::uint64_t return_address = return_through_instances(record, regs, backup, slot);
    finish_outermost_return(record);
    return return_address;
}

}  // namespace

// The common case: a return outside any handler, one instance on its slot.
// Its return-handler call escapes to the trampoline itself
// (arch::ReturnHitFrame) instead of a guard frame of its own, and nothing
// is live across it: the record is found again, the instance is on top.
extern "C" __attribute__((visibility("hidden"), used)) std::uint64_t ukp_return_probe_hit(pt_regs* regs,
                                                                                          pt_regs* backup) {
    ThreadRecord* record = this_thread_record_if_any();
    if (record == nullptr) fatal("ukprobes: a return probe's trampoline was reached by a thread without instances\n");
    if (record->dispatch_depth != 0 || record->current_probe != nullptr || record->handler_escape != 0) [[unlikely]]
        return return_probe_hit_nested(record, regs, backup);
    // Every other call is in its own function, so that this path makes no
    // call but the handler's and keeps nothing in registers across it.
    const std::uint64_t slot = arch::return_address_slot_at_return(*regs);
    ReturnInstance* instance = record->return_stack.top();
    if (instance == nullptr || instance->stack_slot != slot || !instance->armed ||
        (instance->below != nullptr && instance->below->stack_slot == slot)) [[unlikely]]
        return return_probe_hit_outermost(record, regs, backup);
    // As ReturnPathScope, for the outermost entry.
    DispatchScope::enter_outermost(record);
    record->current_probe = &return_path_marker;
    // The handler's changes to ip and sp are not kept: the trampoline leaves
    // by its own frame and to the instance's return address, and no later
    // handler sees them here.
    regs->ip = instance->return_address;
    ReturnProbe* probe = instance->probe;
    if (probe->return_handler != nullptr && !probe->gone.load(std::memory_order_relaxed)) {
        mark_handler_escape(record, reinterpret_cast<std::uint64_t>(arch::return_hit_frame(backup)));
        std::atomic_signal_fence(std::memory_order_seq_cst);
        (void)probe->return_handler(*probe, *instance, *regs);
        std::atomic_signal_fence(std::memory_order_seq_cst);
        record = this_thread_record_if_any();
        record->handler_escape = 0;
    }
    const std::uint64_t return_address = record->return_stack.top()->return_address;
    release_top(*record);
    finish_outermost_return(record);
    return return_address;
}

// The return handler of that call faulted: undo its changes and finish.
extern "C" __attribute__((visibility("hidden"), used)) std::uint64_t ukp_return_abandoned(pt_regs* regs,
                                                                                          pt_regs* backup) {
    ThreadRecord* record = this_thread_record_if_any();
    record->handler_escape = 0;
    copy_regs(*regs, *backup);
    const std::uint64_t return_address = record->return_stack.top()->return_address;
    release_top(*record);
    finish_outermost_return(record);
    return return_address;
}

// --- Unwinding interposers ----------------------------------------------

namespace {
template <class Function>
Function next_definition(const char* name) {
    void* found = dlsym(RTLD_NEXT, name);
    if (found == nullptr) fatal("ukprobes: an interposed unwinding function has no next definition\n");
    return reinterpret_cast<Function>(found);
}
}  // namespace

extern "C" UKP_API _Unwind_Reason_Code _Unwind_RaiseException(struct _Unwind_Exception* exception) {
    using Function = _Unwind_Reason_Code (*)(struct _Unwind_Exception*);
    static const auto real = next_definition<Function>("_Unwind_RaiseException");
    unhook_this_thread();
    return real(exception);
}

extern "C" UKP_API _Unwind_Reason_Code _Unwind_Resume_or_Rethrow(struct _Unwind_Exception* exception) {
    using Function = _Unwind_Reason_Code (*)(struct _Unwind_Exception*);
    static const auto real = next_definition<Function>("_Unwind_Resume_or_Rethrow");
    unhook_this_thread();
    return real(exception);
}

// A stack walk must see the real callers, not the trampoline (libgcc's
// unwinder would stop there: the trampoline has no unwind information a
// walk could follow).  For the walk, the real return addresses go back into
// their slots; afterwards the trampoline goes back in, so the returns are
// still watched.  glibc's backtrace() reaches libgcc through a pointer of
// its own, so both it and _Unwind_Backtrace are interposed.
namespace {
template <class Walk>
auto with_real_return_addresses(Walk&& walk) {
    ThreadRecord* record = this_thread_record_if_any();
    ReturnInstance* top = record ? record->return_stack.top() : nullptr;
    if (top == nullptr) return walk();
    const auto here = reinterpret_cast<std::uint64_t>(__builtin_frame_address(0));
    for (ReturnInstance* instance = top; instance; instance = instance->below) {
        auto* word = reinterpret_cast<std::uint64_t*>(instance->stack_slot);
        if (instance->armed && instance->stack_slot > here && *word == hijack_word(*instance)) {
            *word = instance->return_address;
            instance->marks |= ReturnInstance::instance_walk_restored;
        }
    }
    auto result = walk();
    for (ReturnInstance* instance = top; instance; instance = instance->below)
        if (instance->walk_restored()) {
            *reinterpret_cast<std::uint64_t*>(instance->stack_slot) = hijack_word(*instance);
            instance->marks &= static_cast<std::uint8_t>(~ReturnInstance::instance_walk_restored);
        }
    return result;
}
}  // namespace

extern "C" UKP_API int backtrace(void** buffer, int size) {
    using Function = int (*)(void**, int);
    static const auto real = next_definition<Function>("backtrace");
    return with_real_return_addresses([&] { return real(buffer, size); });
}

extern "C" UKP_API _Unwind_Reason_Code _Unwind_Backtrace(_Unwind_Trace_Fn trace, void* argument) {
    using Function = _Unwind_Reason_Code (*)(_Unwind_Trace_Fn, void*);
    static const auto real = next_definition<Function>("_Unwind_Backtrace");
    return with_real_return_addresses([&] { return real(trace, argument); });
}

extern "C" UKP_API void pthread_exit(void* value) {
    using Function = void (*)(void*);
    static const auto real = next_definition<Function>("pthread_exit");
    unhook_this_thread();
    real(value);
    __builtin_unreachable();
}

// --- The C++ front end ----------------------------------------------------

namespace ukp {

namespace detail {
struct KretprobeState {
    core::ReturnProbe* probe = nullptr;
};
}  // namespace detail

namespace {

// The handlers get the instance's own KretprobeInstance, the one object for
// both calls (as a kernel kretprobe_instance is), which the engine filled
// in when it pushed the instance.
int call_entry(ReturnProbe&, ReturnInstance& instance, pt_regs& regs) {
    return instance.rp->entry_handler(instance, regs);
}
int call_return(ReturnProbe&, ReturnInstance& instance, pt_regs& regs) { return instance.rp->handler(instance, regs); }

std::once_flag trampoline_prepared;

void unregister_all(std::span<Kretprobe* const> probes) {
    std::vector<Kprobe*> entries;
    for (Kretprobe* probe : probes)
        if (probe->kp.is_registered()) entries.push_back(&probe->kp);
    unregister_kprobes(entries);
    for (Kretprobe* probe : probes)
        if (probe->registration.state && probe->registration.state->probe) {
            core::retire_return_probe(*probe->registration.state->probe);
            // The ReturnProbe may be freed from now on.
            if (probe->kp.registration.state) detail::set_return_entry_handler(probe->kp, nullptr, nullptr);
        }
}

}  // namespace

UKP_API detail::KretprobeRegistration::~KretprobeRegistration() {
    if (state == nullptr) return;
    if (state->probe != nullptr) {
        if (!state->probe->gone.load()) {
            // Destroyed while registered: the owner's kp is still alive
            // (members are destroyed after this one); unregister first.
            auto* owner = static_cast<Kretprobe*>(state->probe->front_end);
            Kretprobe* one = owner;
            unregister_all(std::span(&one, 1));
        }
        core::release_return_probe(state->probe);
    }
    delete state;
}

UKP_API std::uint64_t Kretprobe::nmissed() const noexcept {
    return registration.state && registration.state->probe ? registration.state->probe->nmissed.load() : 0;
}
UKP_API std::uint64_t Kretprobe::nabandoned() const noexcept {
    return registration.state && registration.state->probe ? registration.state->probe->nabandoned.load() : 0;
}
UKP_API std::uint64_t Kretprobe::npending() const noexcept {
    return registration.state && registration.state->probe ? registration.state->probe->pending.load() : 0;
}
UKP_API bool Kretprobe::is_registered() const noexcept { return kp.is_registered(); }

UKP_API Result<void> register_kretprobes(std::span<Kretprobe* const> probes) {
    std::call_once(trampoline_prepared, arch::prepare_return_trampoline);
    std::vector<Kprobe*> entries;
    for (Kretprobe* probe : probes) {
        if (probe->kp.is_registered())
            return make_error(Errc::AlreadyRegistered, "this Kretprobe is registered already");
        if (!probe->handler && !probe->entry_handler)
            return make_error(Errc::InvalidArgument, "a Kretprobe needs a handler or an entry_handler");
        if (probe->kp.offset != 0)
            return make_error(Errc::InvalidArgument,
                              "a Kretprobe is placed on a function's entry: kp.offset must be 0");
        if (probe->kp.post_handler)
            return make_error(Errc::InvalidArgument, "a Kretprobe's kp must have no post_handler");
    }
    for (Kretprobe* probe : probes) {
        auto*& state = probe->registration.state;
        if (state == nullptr) state = new detail::KretprobeState();
        // A new ReturnProbe per registration: the previous one may still
        // be referenced by pending instances.
        core::release_return_probe(state->probe);
        auto* core_probe = new core::ReturnProbe();
        core_probe->entry_handler = probe->entry_handler ? call_entry : nullptr;
        core_probe->return_handler = probe->handler ? call_return : nullptr;
        core_probe->front_end = probe;
        core_probe->data_size = probe->data_size;
        core_probe->maxactive = probe->maxactive > 0 ? static_cast<std::uint32_t>(probe->maxactive)
                                                     : core::default_maxactive;
        state->probe = core_probe;
        // The entry record calls return_probe_pre_handler; kp.pre_handler
        // is not used (a std::function holding core_probe would outlive it).
        detail::set_return_entry_handler(probe->kp, core::return_probe_pre_handler, core_probe);
        entries.push_back(&probe->kp);
    }
    auto registered = register_kprobes(entries);
    if (!registered)
        for (Kretprobe* probe : probes) probe->registration.state->probe->gone.store(true);
    return registered;
}

UKP_API Result<void> register_kretprobe(Kretprobe& probe) {
    Kretprobe* one = &probe;
    return register_kretprobes(std::span(&one, 1));
}

UKP_API void unregister_kretprobes(std::span<Kretprobe* const> probes) { unregister_all(probes); }

UKP_API void unregister_kretprobe(Kretprobe& probe) {
    Kretprobe* one = &probe;
    unregister_kretprobes(std::span(&one, 1));
}

}  // namespace ukp

// --- The kernel-compatible C front end ------------------------------------

// ReturnInstance begins with its KretprobeInstance base (the Itanium C++
// ABI puts a first non-virtual base of a class without virtual functions at
// offset 0), whose layout is the C struct's first fields.
static_assert(offsetof(struct kretprobe_instance, rp) == offsetof(ukp::KretprobeInstance, rp));
static_assert(offsetof(struct kretprobe_instance, ret_addr) == offsetof(ukp::KretprobeInstance, return_address));
static_assert(offsetof(struct kretprobe_instance, fp) == offsetof(ukp::KretprobeInstance, stack_slot));
static_assert(offsetof(struct kretprobe_instance, data) == sizeof(ReturnInstance));
static_assert(arch::return_landing_count < 0xffff, "ReturnInstance::landing is 16 bits");

namespace {

struct kretprobe* kretprobe_of(struct kprobe* entry) {
    return reinterpret_cast<struct kretprobe*>(reinterpret_cast<char*>(entry) - offsetof(struct kretprobe, kp));
}

int c_entry(ReturnProbe& probe, ReturnInstance& instance, pt_regs& regs) {
    return static_cast<struct kretprobe*>(probe.front_end)
        ->entry_handler(reinterpret_cast<struct kretprobe_instance*>(&instance), &regs);
}
int c_return(ReturnProbe& probe, ReturnInstance& instance, pt_regs& regs) {
    return static_cast<struct kretprobe*>(probe.front_end)
        ->handler(reinterpret_cast<struct kretprobe_instance*>(&instance), &regs);
}

std::once_flag c_trampoline_prepared;

}  // namespace

// The entry pre-handler of a C return probe; c_api.cpp recognises it and
// marks the record as a return probe's entry.
void* ukp::detail::c_return_probe(struct kprobe* entry) { return kretprobe_of(entry)->ukprobes_private; }

int ukp::detail::c_return_entry(struct kprobe* entry, struct pt_regs* regs) {
    auto* probe = static_cast<ReturnProbe*>(kretprobe_of(entry)->ukprobes_private);
    return entry_through_the_record(*probe, *regs);
}

extern "C" {

UKP_API int register_kretprobes(struct kretprobe** probes, int count) {
    if (probes == nullptr || count <= 0) return -EINVAL;
    std::call_once(c_trampoline_prepared, arch::prepare_return_trampoline);
    std::vector<struct kprobe*> entries;
    for (int i = 0; i < count; ++i) {
        struct kretprobe* rp = probes[i];
        if (rp == nullptr || (rp->handler == nullptr && rp->entry_handler == nullptr) || rp->kp.offset != 0 ||
            rp->kp.post_handler != nullptr)
            return -EINVAL;
        auto* old = static_cast<ReturnProbe*>(rp->ukprobes_private);
        if (old != nullptr && !old->gone.load()) return -EEXIST;
    }
    for (int i = 0; i < count; ++i) {
        struct kretprobe* rp = probes[i];
        core::release_return_probe(static_cast<ReturnProbe*>(rp->ukprobes_private));
        auto* probe = new ReturnProbe();
        probe->entry_handler = rp->entry_handler ? c_entry : nullptr;
        probe->return_handler = rp->handler ? c_return : nullptr;
        probe->front_end = rp;
        probe->data_size = rp->data_size;
        probe->maxactive = rp->maxactive > 0 ? static_cast<std::uint32_t>(rp->maxactive) : default_maxactive;
        probe->mirror_nmissed = &rp->nmissed;
        rp->ukprobes_private = probe;
        rp->kp.pre_handler = ukp::detail::c_return_entry;
        entries.push_back(&rp->kp);
    }
    int result = register_kprobes(entries.data(), count);
    if (result != 0)
        for (int i = 0; i < count; ++i) {
            static_cast<ReturnProbe*>(probes[i]->ukprobes_private)->gone.store(true);
            probes[i]->kp.pre_handler = nullptr;
        }
    return result;
}

UKP_API int register_kretprobe(struct kretprobe* rp) { return register_kretprobes(&rp, 1); }

UKP_API void unregister_kretprobes(struct kretprobe** probes, int count) {
    std::vector<struct kprobe*> entries;
    for (int i = 0; i < count; ++i)
        if (probes[i] != nullptr) entries.push_back(&probes[i]->kp);
    if (entries.empty()) return;
    unregister_kprobes(entries.data(), static_cast<int>(entries.size()));
    for (int i = 0; i < count; ++i)
        if (probes[i] != nullptr && probes[i]->ukprobes_private != nullptr)
            retire_return_probe(*static_cast<ReturnProbe*>(probes[i]->ukprobes_private));
    // The ReturnProbe stays: the C struct has no destructor, pending
    // instances may refer to it, and re-registration replaces it.
}

UKP_API void unregister_kretprobe(struct kretprobe* rp) { unregister_kretprobes(&rp, 1); }

UKP_API unsigned long kretprobe_nabandoned(const struct kretprobe* rp) {
    auto* probe = static_cast<const ReturnProbe*>(rp->ukprobes_private);
    return probe ? probe->nabandoned.load() : 0;
}

UKP_API long long ukprobes_ktime_get_ns(void) {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<long long>(now.tv_sec) * 1'000'000'000LL + now.tv_nsec;
}

}  // extern "C"
