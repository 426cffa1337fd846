#include "os/linux/memory.hpp"

#include <fcntl.h>
#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fmt/format.h>
#include <fstream>
#include <string>
#include <vector>

#include "os/linux/raw_syscall.hpp"

namespace ukp::os {

bool safe_read(std::uint64_t address, void* out, std::size_t size) noexcept {
    iovec local{out, size};
    iovec remote{reinterpret_cast<void*>(address), size};
    long copied = raw_syscall(SYS_process_vm_readv, raw_getpid(), reinterpret_cast<long>(&local), 1,
                              reinterpret_cast<long>(&remote), 1, 0);
    return copied == static_cast<long>(size);
}

Result<CodeWriter> CodeWriter::open() {
    int fd = ::open("/proc/self/mem", O_RDWR | O_CLOEXEC);
    if (fd < 0) return make_system_error("open /proc/self/mem to write code", errno);
    return CodeWriter(fd);
}

CodeWriter::CodeWriter(CodeWriter&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }

CodeWriter::~CodeWriter() {
    if (fd_ >= 0) ::close(fd_);
}

Result<void> CodeWriter::write(std::uint64_t address, std::span<const std::uint8_t> bytes) {
    auto written = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(address));
    if (written != static_cast<ssize_t>(bytes.size()))
        return make_system_error(fmt::format("write {} code bytes at {:#x}", bytes.size(), address),
                                 written < 0 ? errno : EIO);
    return {};
}

namespace {
long membarrier(int command) { return ::syscall(SYS_membarrier, command, 0, 0); }
}  // namespace

Result<void> sync_all_cores() {
    // Registration is once per process, and must be repeated in a fork child
    // (the kernel keeps it per mm); registering twice is harmless.
    static thread_local int registered_pid = 0;
    int pid = raw_getpid();
    if (registered_pid != pid) {
        if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) != 0)
            return make_system_error("membarrier(REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)", errno);
        registered_pid = pid;
    }
    if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) != 0)
        return make_system_error("membarrier(PRIVATE_EXPEDITED_SYNC_CORE)", errno);
    return {};
}

Result<void> memory_barrier_all_threads() {
    static thread_local int registered_pid = 0;
    int pid = raw_getpid();
    if (registered_pid != pid) {
        if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0)
            return make_system_error("membarrier(REGISTER_PRIVATE_EXPEDITED)", errno);
        registered_pid = pid;
    }
    if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0)
        return make_system_error("membarrier(PRIVATE_EXPEDITED)", errno);
    return {};
}

std::size_t page_size() noexcept {
    static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return size;
}

namespace {

struct Range {
    std::uint64_t start, end;
};

Result<std::vector<Range>> read_mappings() {
    std::ifstream maps("/proc/self/maps");
    if (!maps) return make_system_error("open /proc/self/maps", errno);
    std::vector<Range> ranges;
    std::string line;
    while (std::getline(maps, line)) {
        unsigned long long start = 0, end = 0;
        if (std::sscanf(line.c_str(), "%llx-%llx", &start, &end) == 2) ranges.push_back({start, end});
    }
    return ranges;
}

}  // namespace

Result<std::uint64_t> map_code_near(std::uint64_t near_start, std::uint64_t near_end, std::size_t size) {
    // Every byte of the new mapping must be reachable with a rel32 from every
    // byte of [near_start, near_end) and back; keep a margin of `size`.
    constexpr std::uint64_t reach = (1ull << 31) - (1ull << 20);
    const std::uint64_t low = near_end > reach ? near_end - reach : page_size();
    const std::uint64_t high = near_start + reach - size;
    auto mappings = read_mappings();
    if (!mappings) return std::unexpected(mappings.error());

    // Candidate gaps between mappings, tried nearest first: just above the
    // module and just below it.
    std::vector<std::uint64_t> candidates;
    const std::uint64_t page = page_size();
    std::uint64_t previous_end = page;
    for (const auto& mapping : *mappings) {
        if (mapping.start >= previous_end + size) {
            candidates.push_back(previous_end);                 // bottom of the gap
            candidates.push_back(mapping.start - size);         // top of the gap
        }
        previous_end = std::max(previous_end, mapping.end);
    }
    std::sort(candidates.begin(), candidates.end(), [&](std::uint64_t a, std::uint64_t b) {
        auto distance = [&](std::uint64_t x) { return x >= near_start ? x - near_start : near_start - x; };
        return distance(a) < distance(b);
    });
    for (std::uint64_t candidate : candidates) {
        candidate = candidate / page * page;
        if (candidate < low || candidate > high) continue;
        void* mapped = ::mmap(reinterpret_cast<void*>(candidate), size, PROT_READ | PROT_EXEC,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (mapped == MAP_FAILED) continue;  // raced with another mapping: try the next gap
        return reinterpret_cast<std::uint64_t>(mapped);
    }
    return make_error(Errc::OutOfRange,
                      fmt::format("no free {} bytes within +-2 GiB of {:#x}-{:#x}", size, near_start, near_end));
}

}  // namespace ukp::os
