// Memory of the running process: reading it without faulting, writing code
// without ever making a page writable, allocating executable memory close to
// a given address, and making every core see new code.
//
// Facts this relies on:
// - process_vm_readv on our own pid copies memory and fails with EFAULT
//   instead of raising SIGSEGV, so a bad pointer costs a return value.
// - Writes through /proc/self/mem use FOLL_FORCE: they reach read-only
//   private mappings (the kernel breaks copy-on-write for the written page),
//   which is how debuggers plant breakpoints.  No page ever becomes writable,
//   so no page is ever writable and executable, and other threads keep
//   executing the page while it is patched.
// - The descriptor is opened for each batch and closed after it: a program
//   that closes descriptors it does not know (daemons do) must never find
//   ours, and we must never write through a number it has reused.
// - membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) makes every
//   thread of the process execute a core-serializing instruction before it
//   returns to user space: the user-space form of the kernel's sync_core()
//   IPI, needed between the steps of cross-modifying code.
#pragma once

#include <cstdint>
#include <span>

#include "ukprobes/error.hpp"

namespace ukp::os {

// Copies `size` bytes at `address` into `out`; false when any byte is unreadable.
// Async-signal-safe (one raw system call).
[[nodiscard]] bool safe_read(std::uint64_t address, void* out, std::size_t size) noexcept;

// Writes into this process's code.  One object per batch of writes.
class CodeWriter {
public:
    [[nodiscard]] static Result<CodeWriter> open();
    CodeWriter(CodeWriter&& other) noexcept;
    CodeWriter& operator=(CodeWriter&&) = delete;
    ~CodeWriter();

    [[nodiscard]] Result<void> write(std::uint64_t address, std::span<const std::uint8_t> bytes);

private:
    explicit CodeWriter(int fd) : fd_(fd) {}
    int fd_ = -1;
};

// Every thread of the process serializes its instruction stream before it
// next runs user code.
[[nodiscard]] Result<void> sync_all_cores();

// Every running thread of the process executes a full memory barrier before
// this returns (membarrier PRIVATE_EXPEDITED): the heavy side of an
// asymmetric fence whose light side is a compiler barrier.
[[nodiscard]] Result<void> memory_barrier_all_threads();

// Maps `size` bytes (a multiple of the page size) readable and executable,
// anywhere such that every byte is within +-2 GiB (minus `size`) of
// [near_start, near_end).  Errc::OutOfRange when no gap is that close.
[[nodiscard]] Result<std::uint64_t> map_code_near(std::uint64_t near_start, std::uint64_t near_end,
                                                  std::size_t size);

[[nodiscard]] std::size_t page_size() noexcept;

}  // namespace ukp::os
