// is_executable_range: is every byte of a range in executable memory?
//
// Facts this relies on:
// - /proc/self/maps lists this process's mappings in ascending address order,
//   one per line: "start-end perms offset dev inode [path]", start and end in
//   hex, end exclusive, perms four characters with 'x' third.
// - Adjacent mappings may both be executable (a text segment split by
//   mprotect, JIT pages), so a range may span several lines; any gap or any
//   line without 'x' inside the range makes the answer false.
// - The file is read line by line while other threads may map or unmap; the
//   answer is a snapshot and callers must hold off unmapping themselves.
#include "elf/symbols.hpp"

#include <cerrno>
#include <charconv>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace ukp::elf {

namespace {

struct Mapping {
    std::uint64_t start = 0;
    std::uint64_t end = 0;
    bool is_executable = false;
};

std::optional<Mapping> parse_maps_line(std::string_view line) {
    Mapping mapping;
    const auto* const line_end = line.data() + line.size();
    auto parsed = std::from_chars(line.data(), line_end, mapping.start, 16);
    if (parsed.ec != std::errc() || parsed.ptr == line_end || *parsed.ptr != '-') return std::nullopt;
    parsed = std::from_chars(parsed.ptr + 1, line_end, mapping.end, 16);
    // After the end address comes " rwxp": a space, then r, w and x.
    constexpr std::ptrdiff_t execute_flag_offset = 3;
    if (parsed.ec != std::errc() || line_end - parsed.ptr <= execute_flag_offset) return std::nullopt;
    mapping.is_executable = parsed.ptr[execute_flag_offset] == 'x';
    return mapping;
}

}  // namespace

Result<bool> is_executable_range(std::uint64_t address, std::uint64_t length) {
    if (length == 0) return make_error(Errc::InvalidArgument, fmt::format("empty range at {:#x}", address));
    if (address + length < address) {
        return make_error(Errc::InvalidArgument,
                          fmt::format("range at {:#x} of {} bytes wraps around", address, length));
    }
    const std::uint64_t range_end = address + length;

    std::ifstream maps("/proc/self/maps");
    if (!maps) return make_system_error("open '/proc/self/maps'", errno);

    // Walk the mappings in order, advancing `covered_to` through executable
    // ones that touch it without a gap.
    std::uint64_t covered_to = address;
    for (std::string line; std::getline(maps, line);) {
        const auto mapping = parse_maps_line(line);
        if (!mapping || mapping->end <= covered_to) continue;
        if (mapping->start > covered_to || !mapping->is_executable) return false;
        covered_to = mapping->end;
        if (covered_to >= range_end) return true;
    }
    if (maps.bad()) return make_system_error("read '/proc/self/maps'", errno);
    return false;
}

}  // namespace ukp::elf
