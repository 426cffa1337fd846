// The symbol index: which modules are loaded, and name <-> address lookups
// over their function symbols.  The resolution rules are in symbols.hpp.
//
// Facts this relies on:
// - dl_iterate_phdr reports the executable first, with an empty dlpi_name;
//   its file is /proc/self/exe.  Other entries with an empty name have no
//   file we could open and are left out.
// - The vDSO is reported too (glibc names it "linux-vdso.so.1") and has no
//   file; we recognise it by its program headers lying inside the image at
//   getauxval(AT_SYSINFO_EHDR), and read its symbols from a copy of that image
//   (so "__vdso_gettimeofday" and friends resolve like any other function).
// - A module's symbol table does not change while it stays loaded, so it is
//   read at most once per snapshot.  A snapshot does not see later dlopen or
//   dlclose calls; take a new one.
#include "ukprobes/error.hpp"

#include "elf/function_table.hpp"
#include "elf/symbols.hpp"

#include <elf.h>
#include <fnmatch.h>
#include <link.h>
#include <sys/auxv.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <new>
#include <system_error>

#include <fmt/format.h>

namespace ukp::elf {

namespace {

using detail::FunctionEntry;
using detail::FunctionTable;

// How many module names an UnknownModule message lists before "...".
constexpr std::size_t module_names_in_messages = 8;

std::string_view basename_of(std::string_view path) {
    const auto slash = path.rfind('/');
    return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// A module's function table, read on first use.
//
// Loading protocol, safe for concurrent queries on one const SymbolIndex:
//  1. Every reader goes through functions_of(), which calls std::call_once on
//     this module's flag.
//  2. The first caller reads the ELF image and stores `functions` (or
//     `load_error`); concurrent callers block in call_once until it returns.
//  3. call_once's return synchronizes-with the completed initialization, so
//     every caller then reads the fields without a lock; nothing writes them
//     again.  (If the load throws, call_once lets the next caller retry.)
struct LazyFunctionTable {
    std::once_flag once;
    FunctionTable functions;
    std::optional<Error> load_error;
};

// Where a module's ELF image lives.
struct ModuleImage {
    std::string file_path;            // empty for the vDSO
    std::uint64_t memory_address = 0; // the vDSO's image, 0 for files
};

struct Found {
    std::size_t module_index;
    const FunctionEntry* entry;
};

}  // namespace

struct SymbolIndex::State {
    std::vector<Module> modules;
    std::vector<ModuleImage> images;                          // parallel to modules
    std::vector<std::unique_ptr<LazyFunctionTable>> tables;   // parallel; once_flag cannot move

    const LazyFunctionTable& loaded(std::size_t index) const {
        auto& table = *tables[index];
        std::call_once(table.once, [&] {
            const auto& module = modules[index];
            const auto& image = images[index];
            auto entries = image.memory_address != 0
                               ? detail::read_functions_from_memory(image.memory_address, module.bias)
                               : detail::read_functions_from_file(image.file_path, module.bias);
            if (entries) {
                table.functions = FunctionTable(std::move(*entries));
            } else {
                table.load_error = std::move(entries.error());
            }
        });
        return table;
    }

    const FunctionTable& functions_of(std::size_t index) const { return loaded(index).functions; }

    Symbol make_symbol(const Found& found) const {
        return Symbol{
            .name = found.entry->name,
            .module = modules[found.module_index].name,
            .address = found.entry->address,
            .size = found.entry->size,
            .is_global = found.entry->is_global,
            .is_ifunc = found.entry->is_ifunc,
            .module_path = modules[found.module_index].path,
        };
    }

    Result<std::size_t> find_module(std::string_view name) const {
        for (std::size_t index = 0; index < modules.size(); ++index) {
            if (modules[index].name == name || modules[index].path == name) return index;
        }
        std::string loaded_names;
        for (std::size_t index = 0; index < modules.size() && index < module_names_in_messages; ++index) {
            if (index > 0) loaded_names += ", ";
            loaded_names += modules[index].name;
        }
        if (modules.size() > module_names_in_messages) loaded_names += ", ...";
        return make_error(Errc::UnknownModule,
                          fmt::format("module '{}' is not loaded (loaded: {})", name, loaded_names));
    }

    // The global definition of `name` in one module, chosen as the dynamic
    // linker would: when several versions sit at different addresses, the
    // default one (versym without the hidden bit).  Returns a null entry when
    // the module has no global definition.
    Result<Found> find_global(std::size_t module_index, std::string_view name) const {
        const auto& table = functions_of(module_index);
        std::vector<const FunctionEntry*> globals;
        for (const auto index : table.indexes_named(name)) {
            if (table.entries()[index].is_global) globals.push_back(&table.entries()[index]);
        }
        if (globals.size() > 1) {
            // Entries are unique per (name, address), so these are distinct
            // addresses.  Only hidden ones would be a compat-only symbol.
            std::vector<const FunctionEntry*> defaults;
            std::ranges::copy_if(globals, std::back_inserter(defaults),
                                 [](const FunctionEntry* entry) { return !entry->is_hidden_version; });
            if (defaults.size() != 1) {
                return make_error(Errc::AmbiguousSymbol,
                                  fmt::format("symbol '{}' has {} global definitions in module '{}' and "
                                              "{} of them is the default version",
                                              name, globals.size(), modules[module_index].name,
                                              defaults.empty() ? "none" : "more than one"));
            }
            globals = std::move(defaults);
        }
        return Found{module_index, globals.empty() ? nullptr : globals.front()};
    }

    void append_locals(std::size_t module_index, std::string_view name, std::vector<Found>& locals) const {
        const auto& table = functions_of(module_index);
        for (const auto index : table.indexes_named(name)) {
            if (!table.entries()[index].is_global) locals.push_back(Found{module_index, &table.entries()[index]});
        }
    }

    // One local definition, or the reason there is not exactly one.
    Result<Symbol> choose_local(std::string_view name, std::string_view scope,
                                const std::vector<Found>& locals) const {
        if (locals.size() == 1) return make_symbol(locals.front());
        if (locals.empty()) return make_error(Errc::UnknownSymbol, fmt::format("symbol '{}' not found {}", name, scope));
        std::string places;
        for (const auto& local : locals) {
            if (!places.empty()) places += ", ";
            places += fmt::format("{}:{:#x}", modules[local.module_index].name, local.entry->address);
        }
        return make_error(Errc::AmbiguousSymbol,
                          fmt::format("symbol '{}' {} has {} local definitions and no global one ({})", name,
                                      scope, locals.size(), places));
    }

    // " (its symbols could not be read: ...)" when loading failed, so that an
    // UnknownSymbol caused by an unreadable file says so.
    std::string load_failure_note(std::size_t module_index) const {
        const auto& table = loaded(module_index);
        return table.load_error ? fmt::format(" (its symbols could not be read: {})", table.load_error->message)
                                : std::string();
    }
};

namespace {

struct IterationContext {
    std::uint64_t vdso_image = 0;
    std::vector<Module> modules;
    std::vector<ModuleImage> images;  // parallel to modules
    std::size_t objects_seen = 0;
    bool out_of_memory = false;
};

// Whether the object described by `info` is the vDSO mapped at `vdso_image`.
bool is_vdso(const dl_phdr_info& info, std::uint64_t vdso_image) {
    if (vdso_image == 0) return false;
    const auto* header = reinterpret_cast<const ElfW(Ehdr)*>(vdso_image);
    return reinterpret_cast<std::uint64_t>(info.dlpi_phdr) == vdso_image + header->e_phoff;
}

void record_object(const dl_phdr_info& info, IterationContext& context) {
    const bool is_executable = context.objects_seen++ == 0 && (info.dlpi_name == nullptr || info.dlpi_name[0] == '\0');
    const bool is_vdso_object = is_vdso(info, context.vdso_image);
    std::string path = info.dlpi_name != nullptr ? info.dlpi_name : "";
    if (is_vdso_object && path.empty()) path = "linux-vdso.so.1";
    if (path.empty() && !is_executable) return;  // no file and not the vDSO: nothing to read

    Module module;
    module.path = std::move(path);  // the executable's is filled in after the iteration
    module.name = std::string(basename_of(module.path));
    module.bias = info.dlpi_addr;
    for (ElfW(Half) index = 0; index < info.dlpi_phnum; ++index) {
        const auto& header = info.dlpi_phdr[index];
        if (header.p_type != PT_LOAD || (header.p_flags & PF_X) == 0) continue;
        const auto start = info.dlpi_addr + header.p_vaddr;
        module.executable_segments.push_back(Segment{start, start + header.p_memsz});
    }
    context.modules.push_back(std::move(module));
    context.images.push_back(ModuleImage{.file_path = {}, .memory_address = is_vdso_object ? context.vdso_image : 0});
}

int record_object_callback(dl_phdr_info* info, std::size_t, void* opaque) {
    auto& context = *static_cast<IterationContext*>(opaque);
    // No exception may unwind through the loader's C frames.
    try {
        record_object(*info, context);
        return 0;
    } catch (const std::bad_alloc&) {
        context.out_of_memory = true;
        return 1;  // stops the iteration
    }
}

}  // namespace

Result<SymbolIndex> SymbolIndex::snapshot() {
    // 1. List the loaded objects and their executable segments.
    IterationContext context;
    context.vdso_image = getauxval(AT_SYSINFO_EHDR);
    dl_iterate_phdr(record_object_callback, &context);
    if (context.out_of_memory) return make_error(Errc::NoMemory, "listing the loaded modules ran out of memory");
    auto state = std::make_unique<State>();
    state->modules = std::move(context.modules);
    state->images = std::move(context.images);

    // 2. Name the executable after its file, which the loader does not report.
    if (!state->modules.empty() && state->modules.front().path.empty()) {
        std::error_code error;
        const auto executable = std::filesystem::read_symlink("/proc/self/exe", error);
        if (error) return make_system_error("readlink '/proc/self/exe'", error.value());
        auto& module = state->modules.front();
        module.path = executable.string();
        module.name = std::string(basename_of(module.path));
    }

    // 3. Remember where each module's symbols come from; reading them waits
    //    until a query needs them.
    for (std::size_t index = 0; index < state->modules.size(); ++index) {
        if (state->images[index].memory_address == 0) state->images[index].file_path = state->modules[index].path;
        state->tables.push_back(std::make_unique<LazyFunctionTable>());
    }
    return SymbolIndex(std::move(state));
}

SymbolIndex::SymbolIndex(std::unique_ptr<State> state) : state_(std::move(state)) {}
SymbolIndex::SymbolIndex(SymbolIndex&&) noexcept = default;
SymbolIndex& SymbolIndex::operator=(SymbolIndex&&) noexcept = default;
SymbolIndex::~SymbolIndex() = default;

const std::vector<Module>& SymbolIndex::modules() const { return state_->modules; }

Result<Symbol> SymbolIndex::find_function(std::string_view module, std::string_view name) const {
    if (name.empty()) return make_error(Errc::InvalidArgument, "empty symbol name");

    if (!module.empty()) {
        // A named module: its global definition, else its one local.
        const auto module_index = state_->find_module(module);
        if (!module_index) return std::unexpected(module_index.error());
        const auto global = state_->find_global(*module_index, name);
        if (!global) return std::unexpected(global.error());
        if (global->entry != nullptr) return state_->make_symbol(*global);
        std::vector<Found> locals;
        state_->append_locals(*module_index, name, locals);
        const auto& module_name = state_->modules[*module_index].name;
        auto local = state_->choose_local(name, fmt::format("in module '{}'", module_name), locals);
        if (!local && local.error().code == Errc::UnknownSymbol) {
            local.error().message += state_->load_failure_note(*module_index);
        }
        return local;
    }

    // All modules: 1. the first global definition in load order;
    for (std::size_t index = 0; index < state_->modules.size(); ++index) {
        const auto global = state_->find_global(index, name);
        if (!global) return std::unexpected(global.error());
        if (global->entry != nullptr) return state_->make_symbol(*global);
    }
    // 2. else the one local definition among all modules.
    std::vector<Found> locals;
    for (std::size_t index = 0; index < state_->modules.size(); ++index) state_->append_locals(index, name, locals);
    return state_->choose_local(name, "in any loaded module", locals);
}

std::optional<Symbol> SymbolIndex::function_containing(std::uint64_t address) const {
    const auto* module = module_containing(address);
    if (module == nullptr) return std::nullopt;
    const auto module_index = static_cast<std::size_t>(module - state_->modules.data());
    const auto* entry = state_->functions_of(module_index).entry_containing(address);
    if (entry == nullptr) return std::nullopt;
    return state_->make_symbol(Found{module_index, entry});
}

std::optional<FunctionBounds> SymbolIndex::function_bounds_containing(std::uint64_t address) const {
    const auto* module = module_containing(address);
    if (module == nullptr) return std::nullopt;
    const auto module_index = static_cast<std::size_t>(module - state_->modules.data());
    const auto* entry = state_->functions_of(module_index).entry_containing(address);
    if (entry == nullptr) return std::nullopt;
    return FunctionBounds{entry->address, entry->size};
}

const Module* SymbolIndex::module_containing(std::uint64_t address) const {
    for (const auto& module : state_->modules) {
        for (const auto& segment : module.executable_segments) {
            if (address >= segment.start && address < segment.end) return &module;
        }
    }
    return nullptr;
}

Result<std::vector<Symbol>> SymbolIndex::match_functions(std::string_view module, std::string_view pattern) const {
    std::vector<std::size_t> module_indexes;
    if (module.empty()) {
        for (std::size_t index = 0; index < state_->modules.size(); ++index) module_indexes.push_back(index);
    } else {
        const auto module_index = state_->find_module(module);
        if (!module_index) return std::unexpected(module_index.error());
        module_indexes.push_back(*module_index);
    }

    const std::string pattern_string(pattern);  // fnmatch wants a terminated string
    std::vector<Symbol> matches;
    for (const auto module_index : module_indexes) {
        for (const auto& entry : state_->functions_of(module_index).entries()) {
            if (fnmatch(pattern_string.c_str(), entry.name.c_str(), 0) == 0) {
                matches.push_back(state_->make_symbol(Found{module_index, &entry}));
            }
        }
    }
    // Each module's entries are in address order already; modules are not.
    std::ranges::stable_sort(matches, {}, &Symbol::address);
    return matches;
}

}  // namespace ukp::elf
