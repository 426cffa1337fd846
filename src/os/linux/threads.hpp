// Looking at the other threads of this process.
//
// Facts this relies on:
// - /proc/self/task/TID/syscall is readable for threads of our own thread
//   group.  It says "running" for a thread on a CPU (or runnable), and for a
//   blocked thread "NR args... SP PC" (in a system call) or "-1 SP PC"
//   (blocked elsewhere), where PC is the user-space instruction pointer the
//   thread will resume at.  A thread blocked in a system call it issued from
//   an out-of-line slot shows a PC inside that slot.
// - tgkill(pid, tid, 0) fails with ESRCH once the thread has exited.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace ukp::os {

struct ThreadPosition {
    bool running = false;     // on a CPU or runnable: no PC available this way
    std::uint64_t pc = 0;     // valid when !running
};

// The position of thread `tid` of this process; nullopt when it is gone.
[[nodiscard]] std::optional<ThreadPosition> read_thread_position(int tid) noexcept;

[[nodiscard]] bool thread_is_alive(int tid) noexcept;

// The tids of every thread of this process, from /proc/self/task.
[[nodiscard]] std::vector<int> list_threads();

}  // namespace ukp::os
