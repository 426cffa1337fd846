// Guarded calls: how a handler that faults is abandoned (core/handler_call.hpp).
//
// ukp_guarded_call(escape, function, a, b, c) calls function(a, b, c) with
// the C calling convention and returns {its rax, 1}.  Before the call it
// pushes the callee-saved registers and the outer escape point, and stores
// its stack pointer in *escape.  A fault inside the call ends in our fault
// signal handler, which calls escape_guarded_call(): the interrupted context
// gets rip = ukp_guarded_call_escape and rsp = *escape, and the handler
// returns through rt_sigreturn.  Execution continues in the guarded call's
// own frame, which pops everything back and returns {0, 0}.  The frames of
// the abandoned call (and of any signal handlers stacked on it) are dropped
// without running anything, as with longjmp.
//
// Why not __builtin_setjmp: the function that calls it must keep every
// callee-saved register in its frame and cannot be inlined, and the escape
// buffer of an outer guard must be copied aside and back; here the outer
// point is one push and one pop, and the escape itself is ordinary signal
// return (the kernel restores the signal mask and the stack it interrupted).
//
// Nesting: a guarded emulator access inside a handler's own probe hit keeps
// the handler's escape point on its stack and puts it back on both exits.
#include <ucontext.h>

#include <cstdint>

#include "arch/backend.hpp"

namespace ukp::x86 {

__attribute__((used)) static void define_guarded_call() {
    asm volatile(R"(
        .pushsection .text
        .intel_syntax noprefix
        .globl ukp_guarded_call
        .hidden ukp_guarded_call
        .type ukp_guarded_call, @function
        .p2align 4
        # rdi = escape, rsi = function, rdx, rcx, r8 = its arguments
ukp_guarded_call:
        push rbp
        push rbx
        push r12
        push r13
        push r14
        push r15
        push qword ptr [rdi]            # the outer escape point
        push rdi
        sub rsp, 8                      # 9 words + the return address: aligned for the call
        mov [rdi], rsp
        mov rax, rsi
        mov rdi, rdx
        mov rsi, rcx
        mov rdx, r8
        call rax
        mov edx, 1
.Lukp_guarded_call_leave:
        add rsp, 8
        pop rdi
        pop qword ptr [rdi]
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbx
        pop rbp
        ret
        .globl ukp_guarded_call_escape
        .hidden ukp_guarded_call_escape
ukp_guarded_call_escape:
        xor eax, eax
        xor edx, edx
        jmp .Lukp_guarded_call_leave
        .size ukp_guarded_call, .-ukp_guarded_call
        .att_syntax prefix
        .popsection
    )");
}

}  // namespace ukp::x86

extern "C" char ukp_guarded_call_escape[];

namespace ukp::arch {

void escape_guarded_call(void* ucontext, std::uint64_t escape) noexcept {
    auto& g = static_cast<ucontext_t*>(ucontext)->uc_mcontext.gregs;
    g[REG_RIP] = reinterpret_cast<greg_t>(ukp_guarded_call_escape);
    g[REG_RSP] = static_cast<greg_t>(escape);
}

}  // namespace ukp::arch
