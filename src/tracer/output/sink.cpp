// The buffered stream or descriptor behind every writer; see sink.hpp.
#include "tracer/output/sink.hpp"

#include <cerrno>

#include <poll.h>
#include <unistd.h>

namespace ukp::tracer::output {

Result<void> Sink::drain() {
    if (buffer_.size() == 0) {
        return {};
    }
    const std::string_view bytes(buffer_.data(), buffer_.size());
    Result<void> result;
    if (stream_ != nullptr) {
        errno = 0;  // fwrite need not set it; then the cause is unknown: EIO
        if (std::fwrite(bytes.data(), 1, bytes.size(), stream_) != bytes.size()) {
            result = make_system_error("writing the trace output stream", errno != 0 ? errno : EIO);
        }
    } else {
        result = write_to_descriptor(bytes);
    }
    buffer_.clear();
    return result;
}

Result<void> Sink::flush() {
    auto drained = drain();
    if (!drained) {
        return drained;
    }
    if (stream_ != nullptr && std::fflush(stream_) != 0) {
        return make_system_error("flushing the trace output stream", errno);
    }
    return {};
}

Result<void> Sink::write_to_descriptor(std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t written = ::write(fd_, bytes.data(), bytes.size());
        if (written >= 0) {
            bytes.remove_prefix(static_cast<std::size_t>(written));
            continue;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            pollfd waiting{.fd = fd_, .events = POLLOUT, .revents = 0};
            if (::poll(&waiting, 1, -1) < 0 && errno != EINTR) {
                return make_system_error(fmt::format("poll on trace output descriptor {}", fd_), errno);
            }
            continue;
        }
        return make_system_error(fmt::format("write to trace output descriptor {}", fd_), errno);
    }
    return {};
}

}  // namespace ukp::tracer::output
