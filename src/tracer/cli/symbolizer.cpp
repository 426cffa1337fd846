// See symbolizer.hpp.
#include "tracer/cli/symbolizer.hpp"

#include <fmt/format.h>

namespace ukp::tracer::cli {

void Symbolizer::refresh() {
    std::uint32_t count = session_.header().module_count.load(std::memory_order_acquire);
    for (std::size_t i = modules_.size(); i < count && i < max_modules; ++i) {
        auto module = std::make_unique<Module>();
        const ModuleEntry& entry = session_.module(i);
        module->bias = entry.bias;
        module->path.assign(entry.path, strnlen(entry.path, sizeof entry.path));
        modules_.push_back(std::move(module));
    }
}

const elf::detail::FunctionEntry* Symbolizer::find(std::uint64_t address) {
    refresh();
    const elf::detail::FunctionEntry* best = nullptr;
    for (auto& module : modules_) {
        if (address < module->bias) continue;
        if (!module->loaded) {
            module->loaded = true;  // once, even when the file cannot be read
            if (auto functions = elf::detail::read_functions_from_file(module->path, module->bias); functions)
                module->table = elf::detail::FunctionTable(std::move(*functions));
        }
        const auto* entry = module->table.entry_containing(address);
        if (entry != nullptr && (best == nullptr || entry->address > best->address)) best = entry;
    }
    return best;
}

std::string Symbolizer::symbol(std::uint64_t address) {
    const auto* entry = find(address);
    return entry != nullptr ? entry->name : std::string();
}

std::string Symbolizer::name(std::uint64_t address, bool with_size) {
    std::uint64_t key = address ^ (with_size ? 1ull << 63 : 0);
    if (auto cached = cache_.find(key); cached != cache_.end()) return cached->second;
    const auto* entry = find(address);
    std::string text;
    if (entry == nullptr)
        text = fmt::format("{:#x}", address);
    else if (with_size)
        text = fmt::format("{}+{:#x}/{:#x}", entry->name, address - entry->address, entry->size);
    else
        text = fmt::format("{}+{:#x}", entry->name, address - entry->address);
    // Modules loaded later may still name an address not found now.
    if (entry != nullptr) cache_.emplace(key, text);
    return text;
}

}  // namespace ukp::tracer::cli
