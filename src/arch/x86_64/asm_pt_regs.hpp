// Register saves shared by this folder's trampolines (trampoline.cpp,
// return_trampoline.cpp): the general registers into a pt_regs at [rsp]
// (UKP_SAVE_GPRS at: at [rsp + at]),
// and vector registers 0..last into a 64-byte-aligned area at [rsp] (one
// 64-byte slot each), keyed on XINUSE in r12d.
//
// Flags come back without popfq where possible: popfq is microcoded and
// costs more than the rest of a trampoline's register traffic (~40 ns back
// to back on the reference VM, against ~5 ns for what replaces it).  The
// facts the replacement relies on:
// - sahf loads SF ZF AF PF CF from ah and leaves every other flag alone;
// - OF is not in ah, but `add al, al` sets it exactly when al's sign bit
//   flips, so with al = 0x80 (OF was 1) it sets OF, with al = 0 it clears
//   it; sahf afterwards does not touch it;
// - mov, lea and ret change no flag, so the general-register restore and
//   the jump back can follow the flags;
// - the trampolines clear DF (cld, for the C ABI) and TF (so the dispatcher
//   is not single-stepped) on entry, and change no other system flag.
// So sahf is enough when the flags the program should resume with differ
// from the ones pushed on entry in arithmetic flags only, and DF and TF are
// clear in both; anything else (a handler that set DF, AC, ID or TF, or a
// program that had DF or TF set) takes popfq, which restores every flag user
// code may change.
//
// Every offset is an `offsetof` operand, never a hand-counted number: an asm
// statement that uses UKP_ASM_GPR_MACROS must pass UKP_PT_REGS_OPERANDS (and
// purge the two macros at its end with UKP_ASM_PURGE_GPR_MACROS).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ukprobes/pt_regs.h"

#define UKP_ASM_GPR_MACROS                  \
    ".macro UKP_SAVE_GPRS at=0\n"           \
    "mov [rsp + \\at + %c[r15]], r15\n"     \
    "mov [rsp + \\at + %c[r14]], r14\n"     \
    "mov [rsp + \\at + %c[r13]], r13\n"     \
    "mov [rsp + \\at + %c[r12]], r12\n"     \
    "mov [rsp + \\at + %c[bp]], rbp\n"      \
    "mov [rsp + \\at + %c[bx]], rbx\n"      \
    "mov [rsp + \\at + %c[r11]], r11\n"     \
    "mov [rsp + \\at + %c[r10]], r10\n"     \
    "mov [rsp + \\at + %c[r9]], r9\n"       \
    "mov [rsp + \\at + %c[r8]], r8\n"       \
    "mov [rsp + \\at + %c[ax]], rax\n"      \
    "mov [rsp + \\at + %c[cx]], rcx\n"      \
    "mov [rsp + \\at + %c[dx]], rdx\n"      \
    "mov [rsp + \\at + %c[si]], rsi\n"      \
    "mov [rsp + \\at + %c[di]], rdi\n"      \
    ".endm\n"                               \
    ".macro UKP_RESTORE_GPRS\n"             \
    "mov r15, [rsp + %c[r15]]\n"            \
    "mov r14, [rsp + %c[r14]]\n"            \
    "mov r13, [rsp + %c[r13]]\n"            \
    "mov r12, [rsp + %c[r12]]\n"            \
    "mov rbp, [rsp + %c[bp]]\n"             \
    "mov rbx, [rsp + %c[bx]]\n"             \
    "mov r11, [rsp + %c[r11]]\n"            \
    "mov r10, [rsp + %c[r10]]\n"            \
    "mov r9, [rsp + %c[r9]]\n"              \
    "mov r8, [rsp + %c[r8]]\n"              \
    "mov rax, [rsp + %c[ax]]\n"             \
    "mov rcx, [rsp + %c[cx]]\n"             \
    "mov rdx, [rsp + %c[dx]]\n"             \
    "mov rsi, [rsp + %c[si]]\n"             \
    "mov rdi, [rsp + %c[di]]\n"             \
    ".endm\n"

// UKP_FILL_CONSTANT_FIELDS backup: orig_ax = -1 and the user cs and ss, as
// the int3 path has them, in the pt_regs at [rbx] and, with backup=1, in
// its backup copy right below it.  Clobbers rax.  Needs the [user_cs] and
// [user_ss] operands.
#define UKP_ASM_CONSTANT_FIELDS_MACRO                   \
    ".macro UKP_FILL_CONSTANT_FIELDS backup\n"          \
    "mov rax, -1\n"                                     \
    "mov [rbx + %c[orig_ax]], rax\n"                    \
    ".if \\backup\n"                                   \
    "mov [rbx - %c[regs_size] + %c[orig_ax]], rax\n"    \
    ".endif\n"                                          \
    "mov eax, %c[user_cs]\n"                            \
    "mov [rbx + %c[cs]], rax\n"                         \
    ".if \\backup\n"                                   \
    "mov [rbx - %c[regs_size] + %c[cs]], rax\n"         \
    ".endif\n"                                          \
    "mov eax, %c[user_ss]\n"                            \
    "mov [rbx + %c[ss]], rax\n"                         \
    ".if \\backup\n"                                   \
    "mov [rbx - %c[regs_size] + %c[ss]], rax\n"         \
    ".endif\n"                                          \
    ".endm\n"
#define UKP_ASM_PURGE_CONSTANT_FIELDS_MACRO ".purgem UKP_FILL_CONSTANT_FIELDS\n"

// UKP_SAVE_LOW_VECTORS last / UKP_RESTORE_LOW_VECTORS last: registers
// 0..last at the widest width in use, one move each: zmm when XINUSE bit 6
// (ZMM_Hi256) is set, else ymm when bit 2 (AVX) is, else xmm (legacy SSE
// encoding, which leaves clean upper halves clean).  Saving every narrower
// width as well would triple the stores in AVX-512 processes.  Labels 90-95
// are the macros' own.
#define UKP_ASM_VECTOR_MACROS                                   \
    ".macro UKP_VECTORS_0_TO instruction, last, reg, store\n"   \
    ".irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"          \
    ".if \\i <= \\last\n"                                      \
    ".if \\store\n"                                             \
    "\\instruction [rsp + 64*\\i], \\reg\\i\n"                  \
    ".else\n"                                                  \
    "\\instruction \\reg\\i, [rsp + 64*\\i]\n"                  \
    ".endif\n"                                                 \
    ".endif\n"                                                 \
    ".endr\n"                                                  \
    ".endm\n"                                                  \
    ".macro UKP_SAVE_LOW_VECTORS last\n"                        \
    "test r12d, 0x40\n"                                        \
    "jz 91f\n"                                                 \
    "UKP_VECTORS_0_TO vmovdqu64, \\last, zmm, 1\n"              \
    "jmp 92f\n"                                                \
    "91: test r12d, 0x4\n"                                     \
    "jz 90f\n"                                                 \
    "UKP_VECTORS_0_TO vmovdqu, \\last, ymm, 1\n"                \
    "jmp 92f\n"                                                \
    "90:\n"                                                    \
    "UKP_VECTORS_0_TO movaps, \\last, xmm, 1\n"                 \
    "92:\n"                                                    \
    ".endm\n"                                                  \
    ".macro UKP_RESTORE_LOW_VECTORS last\n"                     \
    "test r12d, 0x40\n"                                        \
    "jz 93f\n"                                                 \
    "UKP_VECTORS_0_TO vmovdqu64, \\last, zmm, 0\n"              \
    "jmp 95f\n"                                                \
    "93: test r12d, 0x4\n"                                     \
    "jz 94f\n"                                                 \
    "UKP_VECTORS_0_TO vmovdqu, \\last, ymm, 0\n"                \
    "jmp 95f\n"                                                \
    "94:\n"                                                    \
    "UKP_VECTORS_0_TO movaps, \\last, xmm, 0\n"                 \
    "95:\n"                                                    \
    ".endm\n"

// UKP_RESTORE_FLAGS pushed: rsp points at the pt_regs whose `flags` the
// program resumes with; [rsp + pushed] holds what pushfq saved on entry.
// Clobbers rax, rcx and the area just below rsp.  Labels 81-82 are its own.
#define UKP_ASM_FLAGS_MACRO                                                  \
    ".macro UKP_RESTORE_FLAGS pushed\n"                                      \
    "mov rcx, [rsp + %c[flags]]\n"                                           \
    "mov rax, [rsp + \\pushed]\n"                                            \
    "xor rax, rcx\n"                                                         \
    "test rax, %c[not_arithmetic]\n"                                         \
    "jnz 81f\n"                                                              \
    "test ecx, %c[direction_or_trap]\n"                                      \
    "jnz 81f\n"                                                              \
    "mov eax, ecx\n"                                                         \
    "shr eax, 4\n" /* OF (bit 11) -> al bit 7 */                             \
    "and al, 0x80\n"                                                         \
    "add al, al\n" /* OF = the saved OF */                                   \
    "mov ah, cl\n"                                                           \
    "sahf\n"       /* SF ZF AF PF CF */                                      \
    "jmp 82f\n"                                                              \
    "81: push rcx\n"                                                         \
    "popfq\n"                                                                \
    "82:\n"                                                                  \
    ".endm\n"

// The flags sahf and `add al, al` restore, and the two the trampolines
// clear on entry; operands for UKP_ASM_FLAGS_MACRO.
namespace ukp::x86 {
inline constexpr std::uint64_t arithmetic_flags = 0x8d5;         // CF PF AF ZF SF OF
inline constexpr std::uint64_t direction_or_trap_flags = 0x500;  // DF TF
}  // namespace ukp::x86
#define UKP_FLAGS_OPERANDS                                                             \
    [not_arithmetic] "i"(static_cast<std::int64_t>(~ukp::x86::arithmetic_flags)),      \
        [direction_or_trap] "i"(ukp::x86::direction_or_trap_flags)

#define UKP_ASM_PURGE_GPR_MACROS ".purgem UKP_SAVE_GPRS\n.purgem UKP_RESTORE_GPRS\n"
#define UKP_ASM_PURGE_FLAGS_MACRO ".purgem UKP_RESTORE_FLAGS\n"
#define UKP_ASM_PURGE_VECTOR_MACROS \
    ".purgem UKP_VECTORS_0_TO\n.purgem UKP_SAVE_LOW_VECTORS\n.purgem UKP_RESTORE_LOW_VECTORS\n"

#define UKP_PT_REGS_OPERANDS                                                                                   \
    [r15] "i"(offsetof(pt_regs, r15)), [r14] "i"(offsetof(pt_regs, r14)), [r13] "i"(offsetof(pt_regs, r13)),   \
        [r12] "i"(offsetof(pt_regs, r12)), [bp] "i"(offsetof(pt_regs, bp)), [bx] "i"(offsetof(pt_regs, bx)),   \
        [r11] "i"(offsetof(pt_regs, r11)), [r10] "i"(offsetof(pt_regs, r10)), [r9] "i"(offsetof(pt_regs, r9)), \
        [r8] "i"(offsetof(pt_regs, r8)), [ax] "i"(offsetof(pt_regs, ax)), [cx] "i"(offsetof(pt_regs, cx)),     \
        [dx] "i"(offsetof(pt_regs, dx)), [si] "i"(offsetof(pt_regs, si)), [di] "i"(offsetof(pt_regs, di)),     \
        [orig_ax] "i"(offsetof(pt_regs, orig_ax)), [ip] "i"(offsetof(pt_regs, ip)),                           \
        [cs] "i"(offsetof(pt_regs, cs)), [flags] "i"(offsetof(pt_regs, flags)),                               \
        [sp] "i"(offsetof(pt_regs, sp)), [ss] "i"(offsetof(pt_regs, ss)), [regs_size] "i"(sizeof(pt_regs))
