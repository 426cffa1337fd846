// Session memory: layout, mapping, the ring protocol and the report area.
// See session.hpp for what each side writes.
#include "tracer/session.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

namespace ukp::tracer {

namespace {

constexpr std::size_t page = 4096;

std::uint64_t round_up(std::uint64_t value, std::uint64_t to) { return (value + to - 1) / to * to; }

bool is_power_of_two(std::uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

}  // namespace

Session Session::create(std::string_view definitions, const SessionOptions& options, std::string* error) {
    if (!is_power_of_two(options.ring_bytes) || options.ring_bytes < 4096 || options.ring_count == 0 ||
        options.string_limit < 2 || options.string_limit > 65535) {
        *error = "invalid buffer sizes";
        return {};
    }
    if (options.hist_field.size() >= sizeof(SessionHeader::hist_field)) {
        *error = "the --hist field name is too long";
        return {};
    }
    bool histograms = (options.mode & (mode_hist | mode_latency)) != 0;
    std::uint64_t at = round_up(sizeof(SessionHeader), page);
    std::uint64_t definitions_offset = at;
    at = round_up(at + definitions.size() + 1, page);
    std::uint64_t events_offset = at;
    at = round_up(at + sizeof(EventEntry) * max_events, page);
    std::uint64_t counters_offset = at;
    at = round_up(at + sizeof(EventCounters) * max_events, page);
    std::uint64_t histograms_offset = 0;
    if (histograms) {
        histograms_offset = at;
        at = round_up(at + sizeof(HistogramArea) * max_events, page);
    }
    std::uint64_t modules_offset = at;
    at = round_up(at + sizeof(ModuleEntry) * max_modules, page);
    std::uint64_t messages_offset = at;
    constexpr std::uint32_t messages_capacity = 1u << 20;
    at = round_up(at + messages_capacity, page);
    std::uint64_t rings_offset = at;
    at += static_cast<std::uint64_t>(options.ring_count) * (sizeof(RingHeader) + options.ring_bytes);
    std::uint64_t total = round_up(at, page);

    int fd = memfd_create("ukprobe-session", MFD_CLOEXEC);
    if (fd < 0) {
        *error = std::string("memfd_create: ") + std::strerror(errno);
        return {};
    }
    if (ftruncate(fd, static_cast<off_t>(total)) != 0) {
        *error = std::string("ftruncate: ") + std::strerror(errno);
        close(fd);
        return {};
    }
    void* memory = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (memory == MAP_FAILED) {
        *error = std::string("mmap: ") + std::strerror(errno);
        close(fd);
        return {};
    }
    auto* header = new (memory) SessionHeader{};
    header->magic = session_magic;
    header->version = session_version;
    header->header_size = sizeof(SessionHeader);
    header->total_size = total;
    header->mode = options.mode;
    header->string_limit = options.string_limit;
    header->ring_count = options.ring_count;
    header->ring_bytes = options.ring_bytes;
    header->definitions_offset = definitions_offset;
    header->definitions_length = static_cast<std::uint32_t>(definitions.size());
    if (!definitions.empty())
        std::memcpy(static_cast<char*>(memory) + definitions_offset, definitions.data(), definitions.size());
    header->hist_field_length = static_cast<std::uint32_t>(options.hist_field.size());
    // An empty string_view may have a null data(): memcpy must not see it.
    if (!options.hist_field.empty())
        std::memcpy(header->hist_field, options.hist_field.data(), options.hist_field.size());
    header->events_offset = events_offset;
    header->counters_offset = counters_offset;
    header->histograms_offset = histograms_offset;
    header->modules_offset = modules_offset;
    header->messages_offset = messages_offset;
    header->messages_capacity = messages_capacity;
    header->rings_offset = rings_offset;
    Session session;
    session.header_ = header;
    session.size_ = total;
    session.fd_ = fd;
    if (histograms)
        for (std::size_t i = 0; i < max_events; ++i)
            session.histogram(i)->min.store(UINT64_MAX, std::memory_order_relaxed);
    return session;
}

Session Session::attach(int fd, std::string* error) {
    SessionHeader probe_header;
    if (pread(fd, &probe_header, sizeof probe_header, 0) != static_cast<ssize_t>(sizeof probe_header)) {
        *error = "cannot read the session header";
        return {};
    }
    if (probe_header.magic != session_magic || probe_header.version != session_version ||
        probe_header.header_size != sizeof(SessionHeader)) {
        *error = "the session was made by another version of ukprobe";
        return {};
    }
    void* memory = mmap(nullptr, probe_header.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (memory == MAP_FAILED) {
        *error = std::string("mmap: ") + std::strerror(errno);
        return {};
    }
    close(fd);
    Session session;
    session.header_ = static_cast<SessionHeader*>(memory);
    session.size_ = probe_header.total_size;
    return session;
}

Session::Session(Session&& other) noexcept
    : header_(std::exchange(other.header_, nullptr)), size_(other.size_), fd_(std::exchange(other.fd_, -1)) {}

Session& Session::operator=(Session&& other) noexcept {
    if (this != &other) {
        this->~Session();
        header_ = std::exchange(other.header_, nullptr);
        size_ = other.size_;
        fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
}

Session::~Session() {
    if (header_ != nullptr) munmap(header_, size_);
    if (fd_ >= 0) close(fd_);
}

std::string_view Session::definitions() const noexcept {
    return {reinterpret_cast<const char*>(header_) + header_->definitions_offset, header_->definitions_length};
}

void Session::report(std::string_view line) const noexcept {
    // Reports come from arming and dlopen handling, not from hits: a lock
    // keeps lines whole.  The tracer reads up to messages_length.
    static std::mutex lock;
    std::lock_guard guard(lock);
    std::uint32_t length = header_->messages_length.load(std::memory_order_relaxed);
    if (length + line.size() + 1 > header_->messages_capacity) {
        header_->messages_dropped.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    char* area = reinterpret_cast<char*>(header_) + header_->messages_offset;
    std::memcpy(area + length, line.data(), line.size());
    area[length + line.size()] = '\n';
    header_->messages_length.store(length + static_cast<std::uint32_t>(line.size()) + 1, std::memory_order_release);
}

std::string_view Session::reports(std::uint32_t* consumed) const noexcept {
    std::uint32_t length = header_->messages_length.load(std::memory_order_acquire);
    length = std::min(length, header_->messages_capacity);
    if (*consumed >= length) return {};
    const char* area = reinterpret_cast<const char*>(header_) + header_->messages_offset;
    std::string_view text(area + *consumed, length - *consumed);
    *consumed = length;
    return text;
}

std::uint64_t Session::to_nanoseconds(std::uint64_t timestamp) const noexcept {
    if (static_cast<ClockKind>(header_->clock) != ClockKind::Tsc) return timestamp;
    if (timestamp >= header_->tsc_base) {
        auto delta = static_cast<unsigned __int128>(timestamp - header_->tsc_base) * header_->tsc_mult;
        return header_->monotonic_base + static_cast<std::uint64_t>(delta >> header_->tsc_shift);
    }
    auto delta = static_cast<unsigned __int128>(header_->tsc_base - timestamp) * header_->tsc_mult;
    return header_->monotonic_base - static_cast<std::uint64_t>(delta >> header_->tsc_shift);
}

}  // namespace ukp::tracer
