// Where a writer's bytes go: one reusable memory buffer in front of a stdio
// stream or a file descriptor.  The writers format into buffer() and call
// drain_if_full() after each event; flush() hands over everything.
//
// Facts this relies on:
// - fwrite on a FILE* reports a short count on error and sets ferror; errno
//   then names the cause.
// - write(2) may write fewer bytes than asked (pipes, signals), fails with
//   EINTR when a signal arrives before anything was written, and with
//   EAGAIN on a full non-blocking descriptor; poll(POLLOUT) waits for room.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string_view>

#include <fmt/format.h>

#include "ukprobes/error.hpp"

namespace ukp::tracer::output {

class Sink {
public:
    // Above this many buffered bytes, drain_if_full() hands the buffer over:
    // large enough that fwrite/write run once per few hundred events, small
    // enough to stay in L2.
    static constexpr std::size_t drain_threshold = 64 * 1024;

    explicit Sink(std::FILE* stream) : stream_(stream) {}
    explicit Sink(int fd) : fd_(fd) {}

    [[nodiscard]] fmt::memory_buffer& buffer() { return buffer_; }

    [[nodiscard]] Result<void> drain_if_full() {
        return buffer_.size() >= drain_threshold ? drain() : Result<void>{};
    }
    // The buffer reaches the stream or descriptor (not fflush'ed).  On
    // failure the buffered bytes are dropped.
    [[nodiscard]] Result<void> drain();
    // drain(), then fflush for a stream.
    [[nodiscard]] Result<void> flush();

private:
    [[nodiscard]] Result<void> write_to_descriptor(std::string_view bytes);

    std::FILE* stream_ = nullptr;
    int fd_ = -1;
    fmt::memory_buffer buffer_;
};

}  // namespace ukp::tracer::output
