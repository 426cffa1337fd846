// The ukprobe subcommands (main.cpp parses the command line).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "tracer/definition.hpp"

namespace ukp::tracer::cli {

struct RunOptions {
    std::vector<std::string> definitions;  // -e
    std::vector<std::string> files;        // -f
    std::string output;                    // -o, empty: stdout
    std::string format = "text";
    bool count = false;
    std::string hist_field;
    bool latency = false;
    std::uint32_t buffer_kib = 1024;  // per thread
    std::uint32_t string_size = 256;
    bool quiet = false;  // no summary
    std::vector<std::string> command;
};

struct CheckOptions {
    std::vector<std::string> definitions;
    std::vector<std::string> files;
    std::string binary;
};

struct ListOptions {
    std::string target;  // a binary, or empty with pid
    int pid = 0;
    std::string pattern = "*";
    bool probes = false;
};

[[nodiscard]] int run(const RunOptions& options);
[[nodiscard]] int check(const CheckOptions& options);
[[nodiscard]] int list(const ListOptions& options);

// -e definitions then the lines of -f files (blank lines and # comments
// skipped).  Prints errors in the kernel's format; nullopt when any failed.
// `-:EVENT` lines remove earlier definitions of that event.
struct LoadedDefinitions {
    std::vector<Definition> parsed;
};
[[nodiscard]] std::optional<LoadedDefinitions> load_definitions(const std::vector<std::string>& definitions,
                                                                const std::vector<std::string>& files);

}  // namespace ukp::tracer::cli
