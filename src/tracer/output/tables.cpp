// The end-of-run tables: kprobe_profile rows and `--count` maps.
// Facts followed:
// - The kernel's probes_profile_seq_show (trace_kprobe.c) prints each probe
//   as "  %-44s %15lu %15lu\n": event name, hits, misses; no header.
// - bpftrace prints a count map as "@name[key]: value" per line.
#include <algorithm>
#include <vector>

#include <fmt/format.h>

#include "tracer/output.hpp"

namespace ukp::tracer {

namespace {

constexpr std::size_t kernel_name_width = 44;  // "%-44s"
constexpr std::size_t number_width = 15;       // "%15lu"

}  // namespace

std::string format_profile(std::span<const ProfileRow> rows, const ProfileOptions& options) {
    std::size_t name_width = kernel_name_width;
    for (const auto& row : rows) {
        name_width = std::max(name_width, row.event.size());
    }
    std::string out;
    auto sink = std::back_inserter(out);
    if (options.header) {
        fmt::format_to(sink, "  {:<{}} {:>{}} {:>{}}", "EVENT", name_width, "HITS", number_width, "MISSES",
                       number_width);
        if (options.show_lost) {
            fmt::format_to(sink, " {:>{}}", "LOST", number_width);
        }
        if (options.show_faults) {
            fmt::format_to(sink, " {:>{}}", "FAULTS", number_width);
        }
        out += '\n';
    }
    for (const auto& row : rows) {
        fmt::format_to(sink, "  {:<{}} {:>{}} {:>{}}", row.event, name_width, row.hits, number_width, row.misses,
                       number_width);
        if (options.show_lost) {
            fmt::format_to(sink, " {:>{}}", row.lost, number_width);
        }
        if (options.show_faults) {
            fmt::format_to(sink, " {:>{}}", row.faults, number_width);
        }
        out += '\n';
    }
    return out;
}

std::string format_counts(std::string_view map_name, std::span<const CountEntry> entries) {
    std::vector<const CountEntry*> order;
    order.reserve(entries.size());
    for (const auto& entry : entries) {
        order.push_back(&entry);
    }
    std::sort(order.begin(), order.end(), [](const CountEntry* a, const CountEntry* b) {
        return a->count != b->count ? a->count > b->count : a->key < b->key;
    });
    std::string out;
    auto sink = std::back_inserter(out);
    for (const auto* entry : order) {
        if (entry->key.empty()) {
            fmt::format_to(sink, "{}: {}\n", map_name, entry->count);
        } else {
            fmt::format_to(sink, "{}[{}]: {}\n", map_name, entry->key, entry->count);
        }
    }
    return out;
}

}  // namespace ukp::tracer
