// The trap path: what runs when a thread hits a probe.
//
// It runs inside signal handlers, so it takes no lock, allocates nothing and
// calls no libc function (only raw system calls, on rare paths).  The
// user's handlers are the exception: they may call what they like, and a
// probe they hit is counted as missed rather than handled (the kernel's
// reentrancy rule), see hit_probe().
//
// A breakpoint trap (SIGTRAP, int3), step by step:
//   1. Enter the dispatcher: this thread's sequence becomes odd (seq_cst),
//      before anything is looked up (grace_period.cpp relies on it).
//   2. The trapping address is a probe point: run the pre-handlers of its
//      enabled records; then run the displaced instruction, by emulation or
//      in its slot (boost form, or post form when a record has a
//      post-handler: the slot's second breakpoint brings us back to run it).
//   3. It is the breakpoint at the end of a slot's post form: run the
//      post-handlers and resume after the original instruction.
//   4. Neither, and the byte there is no longer a breakpoint but was one of
//      ours recently: another thread removed the probe after we trapped
//      (seed 001).  Restart the instruction.
//   5. Otherwise the breakpoint is the program's (or a debugger's): leave the
//      dispatcher and deliver the signal to the program's own disposition.
//
// A single-step trap (TF set by the program itself) inside a slot is moved
// to the equivalent original address before the program sees it; after an
// emulated instruction the dispatcher reports the step the hardware would
// have reported.
//
// Faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE):
//   - in a slot's displaced instruction: the program sees it at the
//     original address;
//   - in a user handler: the probe's fault handler may claim it; otherwise
//     the handler call is abandoned (HandlerFaultPolicy::Recover: one line
//     on stderr per probe, nfault counts it, the program continues as if the
//     handler had returned 0) or the process is aborted with a message
//     (HandlerFaultPolicy::Abort).  It is never passed to the program as if
//     the program had faulted;
//   - in a memory access of the emulator: the emulation is abandoned and the
//     instruction runs in its slot instead, where it faults as the program's.
//   - anywhere else: the program's own fault, delivered to its disposition.
#include <signal.h>

#include <utility>

#include "arch/backend.hpp"
#include "core/engine.hpp"
#include "core/handler_call.hpp"
#include "core/kretprobe.hpp"
#include "core/thread_state.hpp"
#include "os/linux/raw_syscall.hpp"
#include "os/linux/signals.hpp"

namespace ukp::core {

namespace {

// A plain loop the compiler must not turn into a memcpy call.
void copy_words(void* to, const void* from, std::size_t size) noexcept {
    auto* target = static_cast<volatile std::uint64_t*>(to);
    auto* source = static_cast<const volatile std::uint64_t*>(from);
    for (std::size_t i = 0; i < size / sizeof(std::uint64_t); ++i) target[i] = source[i];
}

void write_stderr(const char* text) noexcept { os::raw_write_stderr(text); }

void write_hex(char* out, std::uint64_t value) noexcept {
    static const char digits[] = "0123456789abcdef";
    out[0] = '0';
    out[1] = 'x';
    for (int i = 0; i < 16; ++i) out[2 + i] = digits[(value >> (60 - 4 * i)) & 0xf];
    out[18] = '\0';
}

bool guarded_read(std::uint64_t address, void* out, std::size_t size, void* context) {
    auto* record = static_cast<ThreadRecord*>(context);
    return call_guarded(record, EscapeKind::MemoryAccess, [&] {
        auto* to = static_cast<volatile std::uint8_t*>(out);
        auto* from = reinterpret_cast<const volatile std::uint8_t*>(address);
        for (std::size_t i = 0; i < size; ++i) to[i] = from[i];
    });
}

bool guarded_write(std::uint64_t address, const void* in, std::size_t size, void* context) {
    auto* record = static_cast<ThreadRecord*>(context);
    return call_guarded(record, EscapeKind::MemoryAccess, [&] {
        auto* to = reinterpret_cast<volatile std::uint8_t*>(address);
        auto* from = static_cast<const volatile std::uint8_t*>(in);
        for (std::size_t i = 0; i < size; ++i) to[i] = from[i];
    });
}

void run_post_handlers(ThreadRecord* record, const HandlerList* list, pt_regs& regs) {
    for (ProbeRecord* probe : list->probes) {
        if (probe->post_handler == nullptr || !probe->enabled.load(std::memory_order_relaxed)) continue;
        record->current_probe = probe;
        (void)call_guarded(record, EscapeKind::Handler, reinterpret_cast<const void*>(probe->post_handler), probe,
                           &regs, nullptr);
    }
    record->current_probe = nullptr;
}

enum class Outcome : std::uint8_t { Resume, ResumeAndReportStep };

// Runs the displaced instruction without handlers' involvement: emulated
// here, or by sending the thread to its slot.
Outcome execute_displaced(ThreadRecord* record, ProbePoint* point, pt_regs& regs, bool post_trap_wanted) {
    if (arch::is_emulated(point->insn)) {
        arch::Memory memory{guarded_read, guarded_write, record};
        if (arch::emulate(point->insn, regs, memory)) {
            if (post_trap_wanted) run_post_handlers(record, point->handlers.load(std::memory_order_acquire), regs);
            return arch::is_single_stepping(regs) ? Outcome::ResumeAndReportStep : Outcome::Resume;
        }
        // The access would fault: run the copy, which faults as the program's.
        arch::set_instruction_pointer(regs, arch::boost_entry(point->slot));
        return Outcome::Resume;
    }
    arch::set_instruction_pointer(regs, post_trap_wanted ? arch::post_entry(point->slot) : arch::boost_entry(point->slot));
    return Outcome::Resume;
}

// Reentrancy: a handler on this thread hit a probe.  Count it missed for
// every enabled record there, as the kernel does for aggregate probes.
void count_misses(const HandlerList* list) {
    for (ProbeRecord* probe : list->probes)
        if (probe->enabled.load(std::memory_order_relaxed)) probe->count_miss();
}

// Runs the enabled pre-handlers of a hit in registration order (the
// kernel's aggregate rule).  A handler that faults is abandoned as if it
// returned 0 and changed nothing.  Returns the probe whose handler returned
// non-zero, which stops the walk (kernel semantics: it has set the
// registers, ip included), with `before` pointing at the registers as they
// were before that handler ran; nullptr when every handler returned 0.
// `before` may come in pointing at a copy of `regs` made by the caller (the
// trampoline's backup): the first handler then needs no copy of its own;
// later ones are copied into `scratch`.
[[gnu::always_inline]] inline ProbeRecord* run_pre_handlers(ThreadRecord* record, const HandlerList* list,
                                                            pt_regs& regs, pt_regs& scratch, const pt_regs*& before) {
    bool before_is_current = before != nullptr;
    for (ProbeRecord* probe : list->probes) {
        if (!probe->enabled.load(std::memory_order_relaxed)) continue;
        probe->count_hit(record->index);
        if (probe->pre_handler == nullptr) continue;
        record->current_probe = probe;
        if (!before_is_current) {
            copy_regs(scratch, regs);
            before = &scratch;
        }
        auto call = call_guarded(record, EscapeKind::Handler, reinterpret_cast<const void*>(probe->pre_handler),
                                 probe, &regs);
        if (!call.completed) copy_regs(regs, *before);
        record->current_probe = nullptr;
        if (static_cast<int>(call.value) != 0) return probe;
        before_is_current = !call.completed;
    }
    return nullptr;
}

Outcome hit_probe(ThreadRecord* record, ProbePoint* point, pt_regs& regs) {
    arch::set_instruction_pointer(regs, point->address);
    // Being optimized, or un-optimized: the trampoline runs the handlers and
    // the whole displaced region (optimizer.cpp).
    if (point->optimization.load(std::memory_order_acquire) != Optimization::None) {
        arch::set_instruction_pointer(regs, arch::trampoline_entry(point->trampoline.load(std::memory_order_acquire)));
        return Outcome::Resume;
    }
    const HandlerList* list = point->handlers.load(std::memory_order_acquire);

    if (record->current_probe != nullptr) {
        count_misses(list);
        return execute_displaced(record, point, regs, false);
    }
    pt_regs scratch;
    const pt_regs* before = nullptr;
    // A redirect: the probed instruction is not executed.
    if (run_pre_handlers(record, list, regs, scratch, before) != nullptr) return Outcome::Resume;
    return execute_displaced(record, point, regs, list->has_post_handler);
}

Outcome hit_post_breakpoint(ThreadRecord* record, ProbePoint* point, pt_regs& regs) {
    arch::set_instruction_pointer(regs, point->address + arch::insn_length(point->insn));
    if (record->current_probe == nullptr)
        run_post_handlers(record, point->handlers.load(std::memory_order_acquire), regs);
    return arch::is_single_stepping(regs) ? Outcome::ResumeAndReportStep : Outcome::Resume;
}

void report_single_step(int signal, siginfo_t* info, void* context) {
    siginfo_t step{};
    step.si_signo = SIGTRAP;
    step.si_code = TRAP_TRACE;
    step.si_addr = reinterpret_cast<void*>(arch::ucontext_instruction_pointer(context));
    (void)info;
    os::deliver_to_program(signal, &step, context, false);
}

// Delivers a signal to the program as if it had happened at `original`
// (a single step in a stub, a fault in a slot or stub).  The program's
// handler may change the context; we keep that, unless it left the
// instruction pointer at `original`: then we resume where we really are, so
// a faulting displaced instruction reruns without running handlers again.
void deliver_at(int signal, siginfo_t* info, void* context, std::uint64_t original, bool is_fault) {
    const std::uint64_t real = arch::ucontext_instruction_pointer(context);
    pt_regs regs;
    arch::load_regs(context, regs);
    arch::set_instruction_pointer(regs, original);
    ucontext_t translated;
    copy_words(&translated, context, sizeof translated);
    arch::store_regs(regs, &translated);
    os::deliver_to_program(signal, info, &translated, is_fault);
    pt_regs after;
    arch::load_regs(&translated, after);
    if (arch::instruction_pointer(after) == original) arch::set_instruction_pointer(after, real);
    arch::store_regs(after, context);
}

void on_trap_signal(int signal, siginfo_t* info, void* context) {
    ThreadRecord* record = this_thread_record();
    if (record == nullptr) {
        os::deliver_to_program(signal, info, context, false);
        return;
    }
    DispatchScope scope(record);
    Engine& engine = Engine::instance();
    pt_regs regs;
    arch::load_regs(context, regs);
    const auto vectors = arch::vector_registers_of(context);
    VectorRegistersScope vector_view(record, &vectors);

    switch (arch::classify_trap(info)) {
    case arch::TrapKind::Breakpoint: {
        std::uint64_t address = arch::breakpoint_address(regs);
        Outcome outcome;
        std::uint64_t slot = 0;
        if (ProbePoint* point = engine.table.find(address)) {
            // A signal can arrive inside an optimized return probe's entry
            // before its dispatch, while the record describes that entry's
            // return call (optimized_pre_hit<true>); a return probe's
            // entry hit here must not take itself for it.
            const std::uintptr_t outer_call = std::exchange(record->return_call, 0);
            ReturnInstance* outer_instance = std::exchange(record->return_call_instance, nullptr);
            outcome = hit_probe(record, point, regs);
            record->return_call = outer_call;
            record->return_call_instance = outer_instance;
        } else if (ProbePoint* owner = engine.slots.owner_of(address, &slot);
                   owner && arch::locate_in_slot(owner->insn, slot, address) == arch::SlotPlace::AtPostBreakpoint) {
            outcome = hit_post_breakpoint(record, owner, regs);
        } else {
            std::uint8_t byte = arch::breakpoint_bytes[0];
            bool readable = guarded_read(address, &byte, 1, record);
            if (!(readable && byte != arch::breakpoint_bytes[0] && engine.recently_disarmed.contains(address)))
                break;  // step 5: not ours
            arch::set_instruction_pointer(regs, address);  // step 4: restart
            outcome = Outcome::Resume;
        }
        arch::store_regs(regs, context);
        scope.leave();
        if (outcome == Outcome::ResumeAndReportStep) report_single_step(signal, info, context);
        return;
    }
    case arch::TrapKind::SingleStep: {
        // The program single-steps itself.  Steps inside our code are not
        // the program's: inside the shared trampoline code, swallow them;
        // inside a slot or stub, report them at the equivalent original
        // address, or swallow them.
        std::uint64_t slot = 0;
        std::uint64_t pc = arch::instruction_pointer(regs);
        if (arch::is_in_trampoline_code(pc)) return;
        if (ProbePoint* owner = engine.slots.owner_of(pc, &slot)) {
            if (slot == owner->trampoline.load(std::memory_order_relaxed)) {
                std::uint64_t original = arch::trampoline_step_address(owner->optimized, pc);
                if (original == 0) return;
                scope.leave();
                deliver_at(signal, info, context, original, false);
                return;
            }
            auto place = arch::locate_in_slot(owner->insn, slot, pc);
            if (place == arch::SlotPlace::AtPostBreakpoint) {
                (void)hit_post_breakpoint(record, owner, regs);
            } else if (place == arch::SlotPlace::AfterBoostedInsn) {
                arch::set_instruction_pointer(regs, owner->address + arch::insn_length(owner->insn));
            }
            arch::store_regs(regs, context);
        }
        break;
    }
    case arch::TrapKind::Other:
        break;
    }
    scope.leave();
    os::deliver_to_program(signal, info, context, false);
}

[[noreturn]] void abort_for_handler_fault(const char* line) {
    write_stderr(line);
    os::abort_with_message("ukprobes: aborting (handler fault policy is Abort)\n");
}

void on_fault_signal(int signal, siginfo_t* info, void* context) {
    // A read that was allowed to fail (copy_from_user_nofault): first, since
    // threads with no record and handlers with a fault_handler use it too.
    if (std::uint64_t fixup = arch::nofault_fixup(arch::ucontext_instruction_pointer(context)); fixup != 0) {
        arch::set_ucontext_instruction_pointer(context, fixup);
        return;
    }
    ThreadRecord* record = this_thread_record_if_any();
    if (record == nullptr) {  // never trapped: cannot be ours
        os::deliver_to_program(signal, info, context, true);
        return;
    }
    DispatchScope scope(record);
    Engine& engine = Engine::instance();
    std::uint64_t pc = arch::ucontext_instruction_pointer(context);

    // An emulator access that would fault: abandon it (see execute_displaced).
    if (record->handler_escape != 0 && record->escape_kind == EscapeKind::MemoryAccess) {
        scope.leave();
        arch::escape_guarded_call(context, record->handler_escape);
        return;
    }

    // A fault in a user handler.
    if (record->handler_escape != 0 && record->escape_kind == EscapeKind::Handler && record->current_probe != nullptr) {
        ProbeRecord* probe = record->current_probe;
        if (probe->fault_handler != nullptr) {
            pt_regs regs;
            arch::load_regs(context, regs);
            record->current_probe = nullptr;  // a fault in the fault handler is not recursed into
            int handled = probe->fault_handler(*probe, regs, arch::trap_number(signal, info));
            record->current_probe = probe;
            if (handled) {
                arch::store_regs(regs, context);
                return;
            }
        }
        probe->nfault.fetch_add(1, std::memory_order_relaxed);
        char line[160] = "ukprobes: handler of probe at ";
        char number[19];
        write_hex(number, probe->address);
        std::size_t at = 30;
        for (char* c = number; *c; ++c) line[at++] = *c;
        const char* middle = " faulted (signal ";
        for (const char* c = middle; *c; ++c) line[at++] = *c;
        if (signal >= 10) line[at++] = static_cast<char>('0' + signal / 10);
        line[at++] = static_cast<char>('0' + signal % 10);
        const char* tail = " at pc ";
        for (const char* c = tail; *c; ++c) line[at++] = *c;
        write_hex(number, pc);
        for (char* c = number; *c; ++c) line[at++] = *c;
        const char* end = "); the handler call was abandoned\n";
        for (const char* c = end; *c; ++c) line[at++] = *c;
        line[at] = '\0';
        if (engine.handler_fault_policy.load(std::memory_order_relaxed) == HandlerFaultPolicy::Abort)
            abort_for_handler_fault(line);
        if (!probe->fault_reported.exchange(true, std::memory_order_relaxed)) write_stderr(line);
        scope.leave();
        arch::escape_guarded_call(context, record->handler_escape);
        return;
    }

    // A fault of a displaced instruction in its slot or trampoline stub: the
    // program sees it at the instruction's original address, unless it takes
    // the default action (then the instruction faults again where it is and
    // the process ends).
    std::uint64_t slot = 0;
    std::uint64_t original = 0;
    ProbePoint* owner = engine.slots.owner_of(pc, &slot);
    if (owner && slot == owner->slot && arch::locate_in_slot(owner->insn, slot, pc) == arch::SlotPlace::InDisplacedInsn)
        original = owner->address;
    else if (owner && slot == owner->trampoline.load(std::memory_order_relaxed))
        original = arch::trampoline_original_address(owner->optimized, pc);
    if (original != 0) {
        scope.leave();
        deliver_at(signal, info, context, original, true);
        return;
    }
    scope.leave();
    os::deliver_to_program(signal, info, context, true);
}

// A pre-handler of an optimized probe returned non-zero: continue where it
// set ip, if the trampoline can (see below); else undo it from `before`.
[[gnu::noinline]] std::uint64_t optimized_redirect(ProbeRecord* redirecting, pt_regs* regs, const pt_regs* before,
                                                   std::uint64_t entry_sp, std::uint64_t continuation) {
    // The trampoline's frame lies below the probed code's stack by a fixed
    // allowance; a handler that lowered sp further cannot be honoured here
    // (trampoline.cpp).  An ip inside the bytes the optimized jump replaced
    // (a handler that skips the probed instruction) continues in the
    // stub's copy of the instruction there; there is none in the middle of
    // an instruction.
    const char* refused = nullptr;
    if (regs->sp + arch::handler_stack_allowance < entry_sp) {
        refused = "ukprobes: a pre-handler of an optimized probe lowered sp by more than the "
                  "trampoline allows; the redirect was ignored (use UKP_NO_OPTIMIZE)\n";
    } else {
        const std::uint64_t target =
            arch::optimized_redirect_target(redirecting->point->optimized, arch::instruction_pointer(*regs));
        if (target != 0) return target;
        refused = "ukprobes: a pre-handler of an optimized probe set ip inside an instruction its jump "
                  "replaced; the redirect was ignored\n";
    }
    redirecting->nfault.fetch_add(1, std::memory_order_relaxed);
    if (!redirecting->fault_reported.exchange(true, std::memory_order_relaxed)) write_stderr(refused);
    copy_regs(*regs, *before);
    return continuation;
}

// The trampoline's calls (trampoline.hpp).  The stub's data word names the
// point; the continuation is where the relocated region begins, unless a
// pre-handler redirected execution.
template <bool Post>
[[gnu::always_inline]] inline std::uint64_t optimized_hit(pt_regs* regs, const std::uint8_t* vectors,
                                                          unsigned vector_count, pt_regs* backup, void* data,
                                                          std::uint64_t continuation) {
    auto* point = static_cast<ProbePoint*>(data);
    ThreadRecord* record = this_thread_record();
    if (record == nullptr) return continuation;
    DispatchScope scope(record);
    // The trampoline saved the vector registers 64 bytes apart.
    const arch::VectorView view{vectors, 64, static_cast<std::uint8_t>(vector_count)};
    VectorRegistersScope vector_view(record, &view);
    const HandlerList* list = point->handlers.load(std::memory_order_acquire);

    if constexpr (Post) {
        // The first displaced instruction is the probed one.
        arch::set_instruction_pointer(*regs, point->address + arch::insn_length(point->insn));
        if (record->current_probe == nullptr) run_post_handlers(record, list, *regs);
        return continuation;
    } else {
        arch::set_instruction_pointer(*regs, point->address);
        if (record->current_probe != nullptr) {
            count_misses(list);
            return continuation;
        }
        const std::uint64_t entry_sp = regs->sp;
        arch::set_instruction_pointer(*backup, point->address);
        pt_regs scratch;
        const pt_regs* before = backup;
        ProbeRecord* redirecting = run_pre_handlers(record, list, *regs, scratch, before);
        if (redirecting == nullptr) return continuation;
        return optimized_redirect(redirecting, regs, before, entry_sp, continuation);
    }
}

[[gnu::noinline]] std::uint64_t optimized_pre_hit_in_general(pt_regs* regs, const std::uint8_t* vectors,
                                                             unsigned count, pt_regs* backup, void* point,
                                                             std::uint64_t continuation) {
    // Later handlers see what an undo leaves whole: the trampoline wrote
    // only the general registers into the backup (trampoline.cpp), and no
    // handler has run yet.
    backup->orig_ax = regs->orig_ax;
    backup->cs = regs->cs;
    backup->ss = regs->ss;
    backup->flags = regs->flags;
    backup->sp = regs->sp;
    return optimized_hit<false>(regs, vectors, count, backup, point, continuation);
}

// The state a fast-path hit gives its thread while the handler runs, taken
// back: that of a thread outside the dispatcher (no guarded call, no vector
// view, no current probe), which is what the fast path started from.
inline void finish_fast_hit(ThreadRecord* record) noexcept {
    record->handler_escape = 0;  // escape_kind means nothing without it (see mark_handler_escape)
    record->current_probe = nullptr;
    record->vector_view = nullptr;
    DispatchScope::leave_outermost(record);
}

// A return probe's entry (arch::OptimizedRegion::with_return_call): the
// stub goes on with `jmp [rsp - 8]`, so every way into the function must
// write that word: the relocated region, or the landing call of the
// instance a return probe's entry handler hijacked in this hit (`instance`,
// or nullptr), which keeps the return stack buffer right
// (return_trampoline.cpp).  A handler that redirected execution (`next`
// is not the continuation), moved the stack or set TF gets neither.  The
// instance's landing is left by the trampoline variant that fits
// (kretprobe.cpp left that to us): by ret after the landing call, else by
// jmp.
[[gnu::always_inline]] inline std::uint64_t leave_by_return_call(const pt_regs* regs, std::uint64_t next,
                                                                 std::uint64_t continuation,
                                                                 const ReturnInstance* instance) noexcept {
    if (next != continuation) [[unlikely]] {
        if (instance != nullptr)
            arch::leave_landing_by_jump(instance->landing - 1, arch::is_narrow_return_call(continuation));
        return next;
    }
    std::uint64_t target = arch::relocated_region_after_return_call(continuation);
    if (instance != nullptr) {
        const bool narrow = arch::is_narrow_return_call(continuation);
        if (instance->stack_slot == regs->sp && !arch::is_single_stepping(*regs)) [[likely]]
            target = arch::enter_by_landing_call(instance->landing - 1, target, narrow);
        else
            arch::leave_landing_by_jump(instance->landing - 1, narrow);
    }
    *arch::return_call_target_word(regs->sp) = target;
    return continuation;
}

// A return probe's entry outside the common path: the record says which
// return call this is while the handlers run (return_probe_pre_handler()
// reads it), and the outer one, if a signal arrived inside another entry, is
// put back after.
[[gnu::noinline]] std::uint64_t optimized_pre_hit_return_call_in_general(pt_regs* regs, const std::uint8_t* vectors,
                                                                         unsigned count, pt_regs* backup,
                                                                         ProbePoint* point, std::uintptr_t tag,
                                                                         std::uint64_t continuation) {
    ThreadRecord* record = this_thread_record();
    std::uintptr_t outer_tag = 0;
    ReturnInstance* outer_instance = nullptr;
    if (record != nullptr) {
        outer_tag = record->return_call;
        outer_instance = record->return_call_instance;
        record->return_call = tag;
        record->return_call_instance = nullptr;
    }
    const std::uint64_t next = optimized_pre_hit_in_general(regs, vectors, count, backup, point, continuation);
    ReturnInstance* instance = nullptr;
    if (record != nullptr) {
        instance = record->return_call_instance;
        record->return_call = outer_tag;
        record->return_call_instance = outer_instance;
    }
    return leave_by_return_call(regs, next, continuation, instance);
}

// The common case on its own: a thread outside the dispatcher (and, at a
// return probe's entry, outside another entry's return call) hits a point
// with one probe that has a pre-handler.  It does what optimized_hit<false>
// does for it without the list walk, the undo copy for later handlers and
// the save of outer state that only nested hits have; and its handler call
// is a plain call whose escape point is the trampoline body's frame
// (arch::OptimizedHitFrame): a faulting handler resumes in the body, which
// calls ukp_optimized_abandoned().  Every other call is a tail call to a
// general path, so that nothing is live across the handler's but the
// frame (the record is found again, and the probe is the current one).
// The backup's ip is left alone: nothing that reads an undone pt_regs
// follows.  At a return probe's entry the return call is (0, nullptr)
// outside, and set to `tag` while the handler runs.
template <bool ReturnCall>
[[gnu::always_inline]] inline std::uint64_t optimized_pre_hit(pt_regs* regs, const std::uint8_t* vectors,
                                                              unsigned count, pt_regs* backup, ProbePoint* point,
                                                              std::uintptr_t tag, std::uint64_t continuation) {
    auto general = [&] {
        if constexpr (ReturnCall)
            return optimized_pre_hit_return_call_in_general(regs, vectors, count, backup, point, tag,
                                                            continuation);
        else
            return optimized_pre_hit_in_general(regs, vectors, count, backup, point, continuation);
    };
    ThreadRecord* record = detail::this_thread;
    if (record == nullptr || record->dispatch_depth != 0 || record->current_probe != nullptr ||
        record->handler_escape != 0 || (ReturnCall && record->return_call != 0)) [[unlikely]]
        return general();
    DispatchScope::enter_outermost(record);
    const HandlerList* list = point->handlers.load(std::memory_order_acquire);
    ProbeRecord* probe = list->only_pre;
    if (probe == nullptr) [[unlikely]] {
        DispatchScope::leave_outermost(record);
        return general();
    }
    arch::set_instruction_pointer(*regs, point->address);
    if (!probe->enabled.load(std::memory_order_relaxed)) {
        DispatchScope::leave_outermost(record);
        if constexpr (ReturnCall) return leave_by_return_call(regs, continuation, continuation, nullptr);
        return continuation;
    }
    probe->count_hit(record->index);
    arch::OptimizedHitFrame* frame = arch::optimized_hit_frame(backup);
    frame->view = arch::VectorView{vectors, 64, static_cast<std::uint8_t>(count)};
    record->vector_view = &frame->view;
    record->current_probe = probe;
    ReturnInstance* instance = nullptr;
    if constexpr (ReturnCall) {
        // A return probe's entry (the usual owner of such a stub) is called
        // directly and hands back the instance it hijacked: the record's
        // return-call fields stay unused.  Anything else finds the tag there.
        if (probe->pre_handler == return_probe_pre_handler) [[likely]] {
            mark_handler_escape(record, reinterpret_cast<std::uint64_t>(frame));
            std::atomic_signal_fence(std::memory_order_seq_cst);
            instance = return_probe_entry_by_landing_call(*static_cast<ReturnProbe*>(probe->handler_data), *regs);
            std::atomic_signal_fence(std::memory_order_seq_cst);
            finish_fast_hit(detail::this_thread);
            return leave_by_return_call(arch::optimized_hit_regs(frame), frame->continuation, frame->continuation,
                                        instance);
        }
        record->return_call = tag;
    }
    mark_handler_escape(record, reinterpret_cast<std::uint64_t>(frame));
    std::atomic_signal_fence(std::memory_order_seq_cst);
    const int value = probe->pre_handler(*probe, *regs);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    record = detail::this_thread;
    probe = record->current_probe;
    if constexpr (ReturnCall) {
        instance = record->return_call_instance;
        record->return_call = 0;
        record->return_call_instance = nullptr;
    }
    finish_fast_hit(record);
    regs = arch::optimized_hit_regs(frame);
    std::uint64_t next = frame->continuation;
    if (value != 0) [[unlikely]] {
        pt_regs* saved = arch::optimized_hit_backup(frame);
        arch::complete_optimized_backup(regs, saved);
        next = optimized_redirect(probe, regs, saved, saved->sp, frame->continuation);
    }
    if constexpr (ReturnCall) return leave_by_return_call(regs, next, frame->continuation, instance);
    return next;
}

}  // namespace

// [[gnu::used]]: only the trampolines' assembly calls these, and an LTO
// build would otherwise drop them.
extern "C" [[gnu::used]] std::uint64_t ukp_optimized_pre_hit(pt_regs* regs, const std::uint8_t* vectors,
                                                             unsigned count, pt_regs* backup, void* data,
                                                             std::uint64_t continuation) {
    const auto word = reinterpret_cast<std::uintptr_t>(data);
    auto* point = reinterpret_cast<ProbePoint*>(word & ~arch::stub_tag_mask);
    if (const std::uintptr_t tag = word & arch::stub_tag_mask; tag != 0) [[unlikely]]  // has its own body
        return ukp_optimized_return_call_hit(regs, vectors, count, backup, data, continuation);
    return optimized_pre_hit<false>(regs, vectors, count, backup, point, 0, continuation);
}
extern "C" [[gnu::used]] std::uint64_t ukp_optimized_return_call_hit(pt_regs* regs, const std::uint8_t* vectors,
                                                                     unsigned count, pt_regs* backup, void* data,
                                                                     std::uint64_t continuation) {
    const auto word = reinterpret_cast<std::uintptr_t>(data);
    auto* point = reinterpret_cast<ProbePoint*>(word & ~arch::stub_tag_mask);
    return optimized_pre_hit<true>(regs, vectors, count, backup, point, word & arch::stub_tag_mask, continuation);
}
extern "C" [[gnu::used]] std::uint64_t ukp_optimized_abandoned(pt_regs* regs, pt_regs* backup,
                                                               std::uint64_t continuation, void* data) {
    ThreadRecord* record = detail::this_thread;
    finish_fast_hit(record);
    copy_regs(*regs, *backup);
    if ((reinterpret_cast<std::uintptr_t>(data) & arch::stub_tag_mask) != 0) {
        // What optimized_pre_hit<true> would have done after it (it runs
        // only outside another return call's entry).  An entry handler
        // that faulted hijacked nothing (the instance is armed after it);
        // the landing is set all the same should that change.
        if (const ReturnInstance* instance = record->return_call_instance; instance != nullptr)
            arch::leave_landing_by_jump(instance->landing - 1, arch::is_narrow_return_call(continuation));
        record->return_call = 0;
        record->return_call_instance = nullptr;
        *arch::return_call_target_word(regs->sp) = arch::relocated_region_after_return_call(continuation);
    }
    return continuation;
}
extern "C" [[gnu::used]] std::uint64_t ukp_optimized_post_hit(pt_regs* regs, const std::uint8_t* vectors,
                                                              unsigned count, pt_regs* backup, void* point,
                                                              std::uint64_t continuation) {
    return optimized_hit<true>(regs, vectors, count, backup, point, continuation);
}

Result<void> install_trap_handlers() {
    if (auto taken = os::take_signal(SIGTRAP, on_trap_signal); !taken) return taken;
    for (int signal : {SIGSEGV, SIGBUS, SIGILL, SIGFPE})
        if (auto taken = os::take_signal(signal, on_fault_signal); !taken) return taken;
    return os::take_signal(os::sampling_signal(), on_sampling_signal);
}

}  // namespace ukp::core
