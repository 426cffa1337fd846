// Guarded calls: how a handler that faults is abandoned (core/handler_call.hpp).
//
// guarded_call(escape, function, a, b, c) (guarded_call.hpp, inline) calls
// function(a, b, c) with the C calling convention and returns {its rax, 1}.
// Before the call it stores the frame it built in *escape.  A fault inside
// the call ends in our fault signal handler, which calls
// escape_guarded_call(): the interrupted context gets rsp = *escape and rip
// = the resume address the frame holds, and the handler returns through
// rt_sigreturn.  Execution continues in the guarded call's own asm, which
// puts the outer escape point back and returns {0, 0}.  The frames of the
// abandoned call (and of any signal handlers stacked on it) are dropped
// without running anything, as with longjmp; every register the compiler
// could have kept in them is declared destroyed by the asm.
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

namespace ukp::arch {

void escape_guarded_call(void* ucontext, std::uint64_t escape) noexcept {
    auto& g = static_cast<ucontext_t*>(ucontext)->uc_mcontext.gregs;
    g[REG_RSP] = static_cast<greg_t>(escape);
    g[REG_RIP] = static_cast<greg_t>(*reinterpret_cast<const std::uint64_t*>(escape + guarded_call_resume_offset));
}

}  // namespace ukp::arch
