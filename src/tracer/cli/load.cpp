// Reading definitions from -e and -f, as the kernel reads kprobe_events
// writes: each line on its own, `-:EVENT` removing an earlier one.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>

#include "tracer/cli/commands.hpp"

namespace ukp::tracer::cli {

std::optional<LoadedDefinitions> load_definitions(const std::vector<std::string>& definitions,
                                                  const std::vector<std::string>& files) {
    std::vector<std::string> lines = definitions;
    for (const auto& path : files) {
        std::ifstream file(path);
        if (!file) {
            fmt::print(stderr, "ukprobe: error: cannot read '{}'\n", path);
            return std::nullopt;
        }
        for (std::string line; std::getline(file, line);) {
            std::size_t first = line.find_first_not_of(" \t\r");
            if (first == std::string::npos || line[first] == '#') continue;
            if (!line.empty() && line.back() == '\r') line.pop_back();
            lines.push_back(line);
        }
    }
    LoadedDefinitions loaded;
    bool failed = false;
    for (const auto& line : lines) {
        if (line.find('\n') != std::string::npos) {
            fmt::print(stderr, "ukprobe: error: a definition is one line: {:?}\n", line);
            failed = true;
            continue;
        }
        auto parsed = parse_definition(line);
        if (!parsed) {
            fmt::print(stderr, "{}", format_error(parsed.error()));
            failed = true;
            continue;
        }
        if (parsed->type == ProbeType::Remove) {
            auto& list = loaded.parsed;
            auto before = list.size();
            std::erase_if(list, [&](const Definition& existing) {
                return existing.event == parsed->event &&
                       (parsed->group.empty() || existing.group == parsed->group);
            });
            if (list.size() == before) {
                fmt::print(stderr, "ukprobe: error: no event '{}' to remove\n  {}\n", parsed->event, line);
                failed = true;
            }
            continue;
        }
        loaded.parsed.push_back(std::move(*parsed));
    }
    if (failed) return std::nullopt;
    return loaded;
}

}  // namespace ukp::tracer::cli
