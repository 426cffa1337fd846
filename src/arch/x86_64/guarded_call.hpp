// The guarded call (arch/backend.hpp), inline: it runs on every handler call
// of every hit, and an out-of-line version has to save and restore the six
// callee-saved registers itself because an abandoned handler leaves them
// garbage (~5 ns a call on the reference VM, a fifth of an optimized hit).
// Inline, the asm instead tells the compiler that it destroys every
// register but rsp and rbp, and the compiler keeps only what is live across
// it, usually in slots its prologue has already made.
//
// Frame the asm builds below the caller's red zone (16-byte aligned, so the
// call is made with the ABI's alignment), from the escape point E upwards:
//   E+0   the outer escape point (restored when the call ends)
//   E+8   the address of the escape slot
//   E+16  where an abandoned call resumes (label 1 below)
//   E+24  rbp (a frame pointer in builds that keep one)
//   E+32  the caller's rsp
//   E+40  padding
// escape_guarded_call() (guarded_call.cpp) sets rsp = E and rip = [E+16].
#pragma once

#include <cstdint>

namespace ukp::arch {

inline constexpr std::uint64_t guarded_call_resume_offset = 16;

[[gnu::always_inline]] inline GuardedCallResult guarded_call(std::uint64_t* escape, const void* function,
                                                             void* first, void* second, void* third) noexcept {
    register std::uint64_t rax asm("rax") = reinterpret_cast<std::uint64_t>(function);
    register std::uint64_t rcx asm("rcx") = reinterpret_cast<std::uint64_t>(escape);
    register void* rdi asm("rdi") = first;
    register void* rsi asm("rsi") = second;
    register void* rdx asm("rdx") = third;
    asm volatile(
        "mov %%rsp, %%r11\n\t"
        "lea -128(%%rsp), %%rsp\n\t"  // the caller's red zone
        "and $-16, %%rsp\n\t"
        "push %%r11\n\t"
        "push %%r11\n\t"
        "push %%rbp\n\t"
        "lea 1f(%%rip), %%r11\n\t"
        "push %%r11\n\t"
        "push %%rcx\n\t"
        "push (%%rcx)\n\t"
        "mov %%rsp, (%%rcx)\n\t"
        "call *%%rax\n\t"
        "mov $1, %%edx\n\t"
        "jmp 2f\n"
        "1:\n\t"
        "xor %%eax, %%eax\n\t"
        "xor %%edx, %%edx\n"
        "2:\n\t"
        "pop %%rsi\n\t"
        "pop %%rcx\n\t"
        "mov %%rsi, (%%rcx)\n\t"
        "add $8, %%rsp\n\t"
        "pop %%rbp\n\t"
        "pop %%rsp\n\t"
        : "+r"(rax), "+r"(rcx), "+r"(rdi), "+r"(rsi), "+r"(rdx)
        :
        : "rbx", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",
          "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st",
          "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)", "memory", "cc");
    return {rax, rdx ? 1u : 0u};
}

}  // namespace ukp::arch
