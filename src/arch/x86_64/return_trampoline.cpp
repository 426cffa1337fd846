// The return trampoline of return probes (core/kretprobe.hpp).
//
// Facts it relies on (System V x86-64 psABI):
// - At a function's first instruction, [rsp] is the return address; the
//   entry probe overwrites that word with ukp_return_trampoline, so the
//   function's `ret` arrives here with rsp = slot + 8 and every register as
//   the function left it: rax/rdx, xmm0/xmm1 (ymm0/zmm0 for vector types),
//   st0/st1 (long double) may hold the return value.
// - Nothing below rsp is live: the function has returned, and a caller
//   that made a call keeps nothing in its red zone across it.
// - Caller-saved registers are NOT dead: GCC's interprocedural register
//   allocation (-fipa-ra) lets a caller keep values in registers a callee of
//   the same unit is known not to clobber.  So every GPR, the flags and
//   xmm0-15 (with their ymm/zmm upper halves when in use, read from XINUSE
//   like the optimized bodies do) come back exactly as they were.
//   zmm16-31 and k0-7 are not saved: our own code never touches them; a
//   handler compiled for AVX-512 that uses them would clobber them.
//   Revisit if that becomes a real case.
// - The x87 stack must be empty at a call: when TOP != 0 (a long double
//   is being returned) the stack is saved and emptied with fnsave, and put
//   back with frstor.  That path is rare and slow; the common one costs one
//   fnstsw.
//
// Frame, from the slot S (where the return address was) downwards:
//   S          the real return address, written before the exit
//   S-8        the flags (pushfq)
//   below      struct pt_regs; a second copy of its general registers,
//              flags and sp (the backup a faulting handler's changes are
//              undone from); the 64-byte aligned vector area
// Exit: restore everything from pt_regs, rsp = S + 8, `jmp [S]`: rip = the
// real return address, rsp = S + 8, exactly what the caller expects.  A
// signal arriving before the jump builds its frame below S + 8 - 128: [S]
// is safe.
#include <cpuid.h>

#include <cstddef>
#include <cstdint>

#include "arch/x86_64/asm_pt_regs.hpp"
#include "arch/x86_64/trampoline.hpp"
#include "arch/backend.hpp"

extern "C" {
// 1 when xgetbv(ecx=1) may be used (XINUSE), set by prepare_return_trampoline.
__attribute__((visibility("hidden"))) std::uint32_t ukp_return_trampoline_xinuse = 0;
// core/kretprobe.cpp: runs the return handlers (`backup`: a second copy of
// the general registers, flags and sp), returns the real address.
std::uint64_t ukp_return_probe_hit(pt_regs* regs, pt_regs* backup);
extern char ukp_return_trampoline[];
}

namespace ukp::x86 {

namespace {
constexpr std::size_t vector_area = 64 * 16 + 128;  // zmm0-15, then the fnsave image (108 bytes)
constexpr std::size_t fnsave_offset = 64 * 16;
static_assert(vector_area % 64 == 0);
}  // namespace

__attribute__((used)) static void define_return_trampoline() {
    asm volatile(
        ".pushsection .text\n"
        ".intel_syntax noprefix\n"
        UKP_ASM_GPR_MACROS
        UKP_ASM_VECTOR_MACROS
        UKP_ASM_FLAGS_MACRO
        R"(
        # A nop before the entry, so that a backtrace that looks up
        # "return address - 1" does not land in the previous function.
        .p2align 4
        nop
        .globl ukp_return_trampoline
        .hidden ukp_return_trampoline
        .type ukp_return_trampoline, @function
ukp_return_trampoline:
        lea rsp, [rsp - 8]
        pushfq
        lea rsp, [rsp - %c[regs_size]]
        UKP_SAVE_GPRS
        UKP_SAVE_GPRS -%c[regs_size]
        mov rbx, rsp
        mov rax, [rbx + %c[regs_size]]
        mov [rbx + %c[flags]], rax
        mov [rbx - %c[regs_size] + %c[flags]], rax
        lea rax, [rbx + %c[regs_size] + 16]
        mov [rbx + %c[sp]], rax
        mov [rbx - %c[regs_size] + %c[sp]], rax
        mov rax, -1
        mov [rbx + %c[orig_ax]], rax
        mov [rbx - %c[regs_size] + %c[orig_ax]], rax
        xor eax, eax
        mov [rbx + %c[ip]], rax
        mov [rbx - %c[regs_size] + %c[ip]], rax
        mov eax, %c[user_cs]
        mov [rbx + %c[cs]], rax
        mov [rbx - %c[regs_size] + %c[cs]], rax
        mov eax, %c[user_ss]
        mov [rbx + %c[ss]], rax
        mov [rbx - %c[regs_size] + %c[ss]], rax
        # The ABI returns with DF clear; a function that broke that gets it
        # cleared for our code (the exit's popfq path puts it back).
        test byte ptr [rbx + %c[flags] + 1], 4
        jz 2f
        cld
2:      lea rsp, [rbx - %c[regs_size]]
        and rsp, -64
        sub rsp, %c[vector_area]
        xor eax, eax
        cmp dword ptr [rip + ukp_return_trampoline_xinuse], 0
        je 1f
        mov ecx, 1
        xgetbv
1:      mov r12d, eax
        UKP_SAVE_LOW_VECTORS 15
        fnstsw ax
        movzx r13d, ax
        and r13d, 0x3800
        jz 4f
        fnsave [rsp + %c[fnsave]]
4:
        mov rdi, rbx
        lea rsi, [rbx - %c[regs_size]]  # the backup
        call ukp_return_probe_hit
        mov [rbx + %c[regs_size] + 8], rax

        test r13d, r13d
        jz 5f
        frstor [rsp + %c[fnsave]]
5:
        UKP_RESTORE_LOW_VECTORS 15
        mov rsp, rbx
        UKP_RESTORE_FLAGS %c[regs_size]
        UKP_RESTORE_GPRS
        # lea, not add: the flags are restored already.  jmp, not ret: the
        # function's own ret consumed the return-stack-buffer entry its
        # caller's call pushed, so a ret here would pop the caller's entry
        # and mispredict, and so would every return after it up the call
        # chain.  [rsp - 8] is in the red zone, which a signal skips.
        lea rsp, [rsp + %c[regs_size] + 16]
        jmp qword ptr [rsp - 8]
        .size ukp_return_trampoline, .-ukp_return_trampoline
        )" UKP_ASM_PURGE_GPR_MACROS UKP_ASM_PURGE_VECTOR_MACROS UKP_ASM_PURGE_FLAGS_MACRO
        ".att_syntax prefix\n"
        ".popsection\n" ::UKP_PT_REGS_OPERANDS, UKP_FLAGS_OPERANDS, [vector_area] "i"(vector_area), [fnsave] "i"(fnsave_offset),
          [user_cs] "i"(user_cs), [user_ss] "i"(user_ss));
}

}  // namespace ukp::x86

namespace ukp::arch {

std::uint64_t return_trampoline_address() noexcept { return reinterpret_cast<std::uint64_t>(ukp_return_trampoline); }

// `call` pushed the return address: at the first instruction it is [rsp].
std::uint64_t return_address_slot_at_entry(const pt_regs& regs) noexcept { return regs.sp; }

// `ret` popped it: the trampoline's pt_regs.sp is one word above the slot.
std::uint64_t return_address_slot_at_return(const pt_regs& regs) noexcept { return regs.sp - 8; }

void prepare_return_trampoline() noexcept {
    if (x86::cpu_supports_trampolines()) __atomic_store_n(&ukp_return_trampoline_xinuse, 1, __ATOMIC_RELAXED);
}

}  // namespace ukp::arch
