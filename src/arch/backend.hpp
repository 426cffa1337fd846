// The architecture hooks the generic engine calls: the user-space version
// of the kernel's arch_prepare_kprobe / arch_arm_kprobe / resume_execution
// family.  src/core includes this file and nothing under src/arch/<arch>/;
// a second architecture implements the same functions in its own folder.
#pragma once

#include <signal.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <string_view>

#include "ukprobes/error.hpp"
#include "ukprobes/pt_regs.h"

#if defined(__x86_64__)
#include "arch/x86_64/backend_types.hpp"
#else
#error "no probe backend for this architecture"
#endif

namespace ukp::arch {

// Types every backend defines in its backend_types.hpp:
//   PreparedInsn  the decoded, classified instruction under a probe
//   max_insn_length, slot_size, breakpoint_bytes

// Step 1 of registration: decode and classify the instruction at `address`,
// whose original bytes (no breakpoints of ours) start `code`.  Refuses what
// cannot be probed.
[[nodiscard]] Result<PreparedInsn> prepare_insn(std::uint64_t address, std::span<const std::uint8_t> code);

// (inline, in the backend's backend_types.hpp)
// [[nodiscard]] std::size_t insn_length(const PreparedInsn& insn) noexcept;
// (inline, in the backend's backend_types.hpp)
// [[nodiscard]] bool is_emulated(const PreparedInsn& insn) noexcept;
[[nodiscard]] std::string describe_insn(const PreparedInsn& insn);

// Whether [start, start+length) of the function starting at `function_start`
// (original bytes in `function_code`) is on an instruction boundary.
[[nodiscard]] Result<void> check_boundary(std::span<const std::uint8_t> function_code,
                                          std::uint64_t function_start, std::uint64_t address);

// The out-of-line slot: the code the thread runs after the handlers.  Two
// entries: `boost` runs the displaced instruction and jumps back; `post` runs
// it and traps again so that post-handlers run.
[[nodiscard]] Result<void> build_slot(PreparedInsn& insn, std::uint64_t slot_address,
                                      std::span<std::uint8_t, slot_size> out);
[[nodiscard]] std::uint64_t boost_entry(std::uint64_t slot_address) noexcept;
[[nodiscard]] std::uint64_t post_entry(std::uint64_t slot_address) noexcept;

enum class SlotPlace : std::uint8_t {
    Outside,
    InDisplacedInsn,   // executing (or faulting in) the displaced instruction
    AfterBoostedInsn,  // the instruction is done; the jump back has not run
    AtPostBreakpoint,  // the instruction is done; the post trap has not run
};
// Where `pc` lies in a slot.  `pc` is the trapping/faulting instruction's
// address, or for a breakpoint trap the address of the breakpoint.
[[nodiscard]] SlotPlace locate_in_slot(const PreparedInsn& insn, std::uint64_t slot_address,
                                       std::uint64_t pc) noexcept;

// The trap context.
void load_regs(const void* ucontext, pt_regs& regs) noexcept;
void store_regs(const pt_regs& regs, void* ucontext) noexcept;
// (inline, in the backend's backend_types.hpp)
// [[nodiscard]] std::uint64_t instruction_pointer(const pt_regs& regs) noexcept;
// (inline, in the backend's backend_types.hpp)
// void set_instruction_pointer(pt_regs& regs, std::uint64_t address) noexcept;
[[nodiscard]] std::uint64_t ucontext_instruction_pointer(const void* ucontext) noexcept;

// Guarded calls (the x86-64 version is guarded_call.cpp): calls
// function(first, second, third) with the C calling convention and returns
// {its integer result, 1}.  `*escape` is the thread's innermost escape point
// (0: none); the call makes itself the innermost one and puts the outer one
// back when it ends.  A fault inside the call is abandoned by
// escape_guarded_call(ucontext, *escape) in the fault signal handler: the
// interrupted context resumes in the guarded call, which returns {0, 0}.
struct GuardedCallResult {
    std::uint64_t value;
    std::uint64_t completed;
};
}  // namespace ukp::arch
#include "arch/x86_64/guarded_call.hpp"
namespace ukp::arch {
// GuardedCallResult guarded_call(std::uint64_t* escape, const void* function, void* first, void* second,
//                                void* third) noexcept;
// (inline, in the backend's guarded_call.hpp)
void escape_guarded_call(void* ucontext, std::uint64_t escape) noexcept;

enum class TrapKind : std::uint8_t { Breakpoint, SingleStep, Other };
[[nodiscard]] TrapKind classify_trap(const siginfo_t* info) noexcept;
// The breakpoint instruction's address, given the registers after the trap.
[[nodiscard]] std::uint64_t breakpoint_address(const pt_regs& regs) noexcept;
// The program single-steps itself (TF); emulated instructions must then
// report the step the hardware would have.
// (inline, in the backend's backend_types.hpp: is_single_stepping)
// The kernel's trap number for a fault signal (kprobes' fault_handler trapnr).
[[nodiscard]] int trap_number(int signal, const siginfo_t* info) noexcept;

// Executes an emulated instruction on `regs`; memory goes through `read` and
// `write`, which return false when an access would fault.
struct Memory {
    bool (*read)(std::uint64_t address, void* out, std::size_t size, void* context);
    bool (*write)(std::uint64_t address, const void* in, std::size_t size, void* context);
    void* context;
};
[[nodiscard]] bool emulate(const PreparedInsn& insn, pt_regs& regs, const Memory& memory) noexcept;

// --- Optimized probes: a jump to a trampoline instead of a breakpoint ---

// Whether this CPU can run trampolines at all.
[[nodiscard]] bool can_use_trampolines() noexcept;

// Decides whether the probe at `address` can be optimized, on the original
// bytes of its whole function; the error is the reason it cannot.
// `probed` is the probe's instruction as prepare_insn() saw it.
// `direct_callers` (read only when `address` is the function's start):
// whether code of the function's module may call or jump
// straight to its start (direct_branch_targets).  Only then can a caller
// have kept values in registers the ABI says a call destroys: with
// interprocedural register allocation (GCC's -fipa-ra, on at -O2) a caller
// of a function it sees compiled in the same unit keeps values in the
// caller-saved registers that function leaves alone, so at such a
// function's entry more is live than its arguments.  A call through the PLT,
// the GOT or a pointer cannot rely on that.
[[nodiscard]] std::expected<OptimizedRegion, std::string> plan_optimization(
    std::span<const std::uint8_t> function_code, std::uint64_t function_start, std::uint64_t address,
    const PreparedInsn& probed, bool with_post_handler, bool direct_callers);
// Every address inside [lowest, highest) that a direct call, jump or
// conditional jump (rel32 or rel8) starting in the first `scan_length`
// bytes of `code`, mapped at `start`, would go to; unsorted, with repeats.
// `code` may run past `scan_length` (up to 5 bytes are read past an
// instruction's first byte), so a module can be scanned in windows.  Read
// from the bytes without decoding, so bytes inside other instructions count
// too: it can only make a function look called when it is not, the safe
// mistake.
[[nodiscard]] std::vector<std::uint64_t> direct_branch_targets(std::span<const std::uint8_t> code,
                                                               std::uint64_t start, std::size_t scan_length,
                                                               std::uint64_t lowest, std::uint64_t highest);
[[nodiscard]] std::uint64_t region_start(const OptimizedRegion& plan) noexcept;
[[nodiscard]] std::size_t region_length(const OptimizedRegion& plan) noexcept;

// Writes the trampoline stub for `point` into `out`, to live at `stub`.
[[nodiscard]] Result<void> build_trampoline(OptimizedRegion& plan, std::uint64_t stub, const void* point,
                                            std::span<std::uint8_t, slot_size> out);
// The bytes that replace the region's first bytes.
[[nodiscard]] Result<std::array<std::uint8_t, optimized_jump_length>> optimized_jump(const OptimizedRegion& plan,
                                                                                     std::uint64_t stub);
// Shared trampoline code a thread may be in on its way back into a stub.
[[nodiscard]] bool is_in_trampoline_code(std::uint64_t pc) noexcept;
// The original address of the displaced instruction a stub is executing at
// `pc`, or 0 when `pc` is not in one.
[[nodiscard]] std::uint64_t trampoline_original_address(const OptimizedRegion& plan, std::uint64_t pc) noexcept;

// Where a pre-handler's redirect to `target` continues: `target`, unless it
// lies past the start of the region the optimized jump replaced and before
// its end; then the stub's copy of the instruction that starts there, or 0
// when none does (the middle of an instruction).
[[nodiscard]] std::uint64_t optimized_redirect_target(const OptimizedRegion& plan, std::uint64_t target) noexcept;

// A program single-stepping itself (TF) through a stub: the original
// address the hardware would have reported for a step that lands on `pc`,
// or 0 for a step inside our own code, which the program must not see.
[[nodiscard]] std::uint64_t trampoline_step_address(const OptimizedRegion& plan, std::uint64_t pc) noexcept;

// Where a thread enters a stub, from a breakpoint hit or the jump.
// (inline, in the backend's backend_types.hpp)
// [[nodiscard]] std::uint64_t trampoline_entry(std::uint64_t stub) noexcept;
// The trampoline calls the dispatcher with the stub's data word (which
// names the probe point), where the stub continues (the relocated region)
// when no handler redirects execution, and a pt_regs complete but for ip
// (the backend's trampoline.hpp: ukp_optimized_pre_hit).

// The probed context's vector registers (x86-64: xmm), as saved by the
// kernel in a signal frame or by a trampoline: `count` registers of 16
// bytes each, `stride` bytes apart.  Handlers read them through
// ukp::probed_vector_register() (typed entry probes' floating-point
// arguments).
struct VectorView {
    const std::uint8_t* base = nullptr;
    std::uint16_t stride = 0;
    std::uint8_t count = 0;
};
[[nodiscard]] VectorView vector_registers_of(const void* ucontext) noexcept;

// What an optimized probe's trampoline body keeps right below the backup
// pt_regs it passes to the dispatcher (x86: trampoline.cpp).  The common
// case's handler call (one probe, a pre-handler, no nesting) escapes to the
// body itself: a handler that faults resumes at `resume`, and the body calls
// ukp_optimized_abandoned() to finish the hit.  So that call needs no guard
// frame of its own, and the dispatcher keeps nothing but this frame across
// it (a guard frame and the callee-saved registers it forces cost about a
// fifth of an entry hit).
struct OptimizedHitFrame {
    std::uint64_t continuation;         // body: where the stub goes on
    std::uint64_t body_state;           // body: its own, for the resume
    std::uint64_t resume;               // body: at guarded_call_resume_offset
    VectorView view;                    // dispatcher: the saved vector registers
};
static_assert(offsetof(OptimizedHitFrame, resume) == guarded_call_resume_offset);
// The same for the return trampoline (x86: return_trampoline.cpp): its
// common case's return-handler call escapes to it, and it then calls
// ukp_return_abandoned().
struct ReturnHitFrame {
    std::uint64_t body_state;           // trampoline: its own, for the resume
    std::uint64_t reserved;
    std::uint64_t resume;               // trampoline: at guarded_call_resume_offset
    std::uint64_t padding;
};
static_assert(offsetof(ReturnHitFrame, resume) == guarded_call_resume_offset);
[[nodiscard]] inline ReturnHitFrame* return_hit_frame(pt_regs* backup) noexcept {
    return reinterpret_cast<ReturnHitFrame*>(backup) - 1;
}
// The frame lies right below the backup, which lies right below the
// pt_regs the handlers see.
[[nodiscard]] inline OptimizedHitFrame* optimized_hit_frame(pt_regs* backup) noexcept {
    return reinterpret_cast<OptimizedHitFrame*>(backup) - 1;
}
[[nodiscard]] inline pt_regs* optimized_hit_backup(const OptimizedHitFrame* frame) noexcept {
    return reinterpret_cast<pt_regs*>(const_cast<OptimizedHitFrame*>(frame) + 1);
}
[[nodiscard]] inline pt_regs* optimized_hit_regs(const OptimizedHitFrame* frame) noexcept {
    return optimized_hit_backup(frame) + 1;
}

// --- Reads that may fault (src/arch/x86_64/safe_copy.cpp) ---

// Copies `size` bytes; returns how many were NOT copied (0: all were).
[[nodiscard]] std::size_t copy_nofault(void* destination, const void* source, std::size_t size) noexcept;
// Copies a NUL-terminated string of at most `size` bytes including the NUL:
// its length when the NUL was within them, `size` when not; on a fault
// ~N (negative), N being the bytes copied before it.
[[nodiscard]] long string_copy_nofault(char* destination, const void* source, std::size_t size) noexcept;
// For the fault handler: where a thread that faulted at `pc` inside one of
// those copies resumes, or 0 when `pc` is not in them.
[[nodiscard]] std::uint64_t nofault_fixup(std::uint64_t pc) noexcept;
void set_ucontext_instruction_pointer(void* ucontext, std::uint64_t address) noexcept;

// --- Return probes (src/arch/x86_64/return_trampoline.cpp) ---
// On every call of a return-probed function, so inline, in
// backend_types.hpp: return_trampoline_address() (where a hijacked return
// goes), return_address_slot_at_entry/at_return(regs) (where the return
// address is stored), is_return_hijack(address) (the trampoline or a
// landing), return_landing(index, return_address, narrow) (stores the real
// address and the trampoline variant for landing `index`, returns the
// landing), return_landing_target(index, return_address) and
// leave_landing_by_jump(index, narrow) (the same in two steps, for a hit
// that decides later how the landing is left), return_landing_address(index),
// return_landings_per_block.
//
// Return landings are distinct return addresses that continue in the
// trampoline and carry unwind information naming the real return address,
// so that an unwinder that cannot be interposed (thread cancellation)
// passes them.  A thread claims a block of them (-1: none left) and uses
// them as a stack.  All of this is async-signal-safe but the preparation.

// Called once before the first return probe is armed (not async-signal-safe):
// the trampoline's XINUSE check and the landings.
void prepare_return_trampoline() noexcept;
[[nodiscard]] std::int32_t claim_return_landing_block() noexcept;

}  // namespace ukp::arch
