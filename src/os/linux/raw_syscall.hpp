// System calls for the trap path, issued with the `syscall` instruction
// directly.  The trap path runs inside signal handlers and must not enter
// libc: a user may have put a probe on libc's syscall() or getpid(), and
// errno is not ours to change.  Results follow the kernel convention:
// -errno on failure.
#pragma once

#include <sys/syscall.h>

#include <cstdint>

namespace ukp::os {

inline long raw_syscall(long number, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0, long a5 = 0,
                        long a6 = 0) {
    long result;
    register long r10 asm("r10") = a4;
    register long r8 asm("r8") = a5;
    register long r9 asm("r9") = a6;
    asm volatile("syscall"
                 : "=a"(result)
                 : "a"(number), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                 : "rcx", "r11", "memory");
    return result;
}

inline int raw_gettid() { return static_cast<int>(raw_syscall(SYS_gettid)); }
inline int raw_getpid() { return static_cast<int>(raw_syscall(SYS_getpid)); }
inline long raw_tgkill(int pid, int tid, int signal) { return raw_syscall(SYS_tgkill, pid, tid, signal); }
inline long raw_write(int fd, const void* data, std::size_t size) {
    return raw_syscall(SYS_write, fd, reinterpret_cast<long>(data), static_cast<long>(size));
}

// A message on stderr without libc (for the trap path).
inline void raw_write_stderr(const char* text) {
    std::size_t length = 0;
    while (text[length] != '\0') ++length;
    (void)raw_write(2, text, length);
}

// Prints `text` and ends the process with SIGABRT, whatever the program's
// SIGABRT disposition: for states the trap path cannot recover from.
[[noreturn]] inline void abort_with_message(const char* text) {
    raw_write_stderr(text);
    long default_action[4] = {0 /* SIG_DFL */, 0, 0, 0};  // the kernel's struct sigaction
    raw_syscall(SYS_rt_sigaction, 6 /* SIGABRT */, reinterpret_cast<long>(default_action), 0, 8);
    raw_tgkill(raw_getpid(), raw_gettid(), 6 /* SIGABRT */);
    for (;;) raw_syscall(SYS_exit_group, 134);
}

}  // namespace ukp::os
