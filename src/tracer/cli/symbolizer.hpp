// Names addresses of the traced program ("deflate+0x1c") from the files of
// the modules the agent listed in the session, so it works after the
// program has exited and never touches the program's memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "elf/function_table.hpp"
#include "tracer/session.hpp"

namespace ukp::tracer::cli {

class Symbolizer {
public:
    explicit Symbolizer(const Session& session) : session_(session) {}

    // "sym+0x1c" (with "/0xSIZE" when `with_size`), or "0x7f..." when no
    // module symbol covers the address.
    [[nodiscard]] std::string name(std::uint64_t address, bool with_size = false);
    // The symbol alone, empty when unknown.
    [[nodiscard]] std::string symbol(std::uint64_t address);

private:
    struct Module {
        std::uint64_t bias = 0;
        std::string path;
        bool loaded = false;
        elf::detail::FunctionTable table;
    };
    const elf::detail::FunctionEntry* find(std::uint64_t address);
    void refresh();

    const Session& session_;
    std::vector<std::unique_ptr<Module>> modules_;
    std::unordered_map<std::uint64_t, std::string> cache_;
};

}  // namespace ukp::tracer::cli
