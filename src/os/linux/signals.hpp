// Signals shared with the program.
//
// ukprobes needs SIGTRAP (int3 probes), SIGSEGV/SIGBUS/SIGILL/SIGFPE (faults
// in out-of-line slots and in handlers) and one real-time signal (sampling
// threads' program counters for grace periods).  The program may want them
// too.  The protocol:
// 1. When ukprobes takes a signal it records the program's disposition and
//    installs its own handler (SA_SIGINFO | SA_ONSTACK | SA_NODEFER |
//    SA_RESTART).
// 2. From then on the kernel's disposition stays ours.  What the program asks
//    for through sigaction(), signal(), sysv_signal() and bsd_signal() is
//    recorded as the program's disposition instead (this library exports
//    those names, so it interposes on libc when linked or preloaded), and
//    the program reads back what it set.  A raw rt_sigaction system call
//    is not seen by the interposition; check_signal_ownership(), run at
//    every registration, puts our handler back and records the program's.
// 3. Whatever ukprobes' handler does not consume goes to the program's
//    disposition exactly as the kernel would have delivered it: its handler
//    with its sa_mask blocked, or the default action.
// The recorded dispositions are guarded by a sequence lock so that a signal
// handler can read them while another thread calls sigaction().
#pragma once

#include <signal.h>

#include "ukprobes/error.hpp"

namespace ukp::os {

using SignalHandler = void (*)(int, siginfo_t*, void*);

// Makes `signal` ours (idempotent).  Not async-signal-safe.
[[nodiscard]] Result<void> take_signal(int signal, SignalHandler handler);

// Delivers the signal to the program's recorded disposition.  `context` is
// the ucontext_t the kernel gave us, possibly edited.  Returns when the
// program's handler returns (or when the signal is ignored); the default
// action of a fatal signal does not return for SIGTRAP, and for a fault
// (`is_fault`) it restores SIG_DFL so that returning re-executes the faulting
// instruction and the kernel ends the process as it would have.
void deliver_to_program(int signal, siginfo_t* info, void* context, bool is_fault) noexcept;

// Re-installs our handler where something replaced it behind our back (a raw
// rt_sigaction); returns the number of signals repaired.
int check_signal_ownership() noexcept;

// The real-time signal used to sample threads' program counters.
[[nodiscard]] int sampling_signal() noexcept;

// The address the kernel returns through after a signal handler
// (glibc's __restore_rt); probing it would break every signal delivery.
[[nodiscard]] std::uint64_t signal_restorer_address() noexcept;

}  // namespace ukp::os
