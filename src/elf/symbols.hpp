// Modules and symbols of the running process.
//
// Facts this relies on:
// - dl_iterate_phdr lists every loaded ELF object (the executable first, with
//   an empty name, then libraries in load order, the vDSO among them) with its
//   load bias and program headers.  Executable PT_LOAD segments (PF_X) bound
//   where code of that module lives.
// - Function symbols come from .symtab when the file still has it and from
//   .dynsym otherwise (Debian strips .symtab from its libraries); STT_FUNC and
//   STT_GNU_IFUNC both count; st_size gives the function's end.  Runtime
//   address = load bias + st_value.
// - An unqualified name resolves the way dlsym(RTLD_DEFAULT) would pick among
//   global definitions: the first module in load order that defines it
//   globally (STB_GLOBAL/STB_WEAK).  Local symbols are used only when no
//   global one exists and exactly one local matches; several matching locals
//   are Errc::AmbiguousSymbol, as tracefs refuses non-unique symbols.
// - A module is named by its path's basename ("libc.so.6") or its full path;
//   the main executable also answers to its basename.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ukprobes/error.hpp"

namespace ukp::elf {

struct Symbol {
    std::string name;
    std::string module;        // basename of the module that defines it
    std::uint64_t address = 0; // runtime address
    std::uint64_t size = 0;    // 0 when the ELF does not say
    bool is_global = false;
    // STT_GNU_IFUNC (memcpy, strlen, ... in libc): `address` is the resolver
    // that picks an implementation at load time, not code that runs per call.
    bool is_ifunc = false;
    std::string module_path;
};

struct FunctionBounds {
    std::uint64_t address = 0;  // runtime address
    std::uint64_t size = 0;     // 0 when the ELF does not say
};

struct Segment {
    std::uint64_t start = 0;  // runtime address
    std::uint64_t end = 0;    // one past the last byte
};

struct Module {
    std::string path;   // as the loader reports it; /proc/self/exe resolved for the executable
    std::string name;   // basename
    std::uint64_t bias = 0;
    std::vector<Segment> executable_segments;
};

class SymbolIndex {
public:
    // Takes the list of loaded modules now; symbol tables are read lazily,
    // once per module, when first needed.
    [[nodiscard]] static Result<SymbolIndex> snapshot();

    SymbolIndex(SymbolIndex&&) noexcept;
    SymbolIndex& operator=(SymbolIndex&&) noexcept;
    ~SymbolIndex();

    [[nodiscard]] const std::vector<Module>& modules() const;

    // `module` empty: search all modules as described above.
    // Errc::UnknownModule, Errc::UnknownSymbol, Errc::AmbiguousSymbol.
    [[nodiscard]] Result<Symbol> find_function(std::string_view module, std::string_view name) const;

    // The function symbol whose [address, address+size) holds `address`.
    [[nodiscard]] std::optional<Symbol> function_containing(std::uint64_t address) const;
    // Where that function lies, without copying its names: registration
    // asks this for every probe of a batch.
    [[nodiscard]] std::optional<FunctionBounds> function_bounds_containing(std::uint64_t address) const;

    [[nodiscard]] const Module* module_containing(std::uint64_t address) const;

    // Every function symbol of the module (or of all modules when empty) whose
    // name matches the shell glob `pattern` (fnmatch).  Sorted by address.
    [[nodiscard]] Result<std::vector<Symbol>> match_functions(std::string_view module,
                                                              std::string_view pattern) const;

private:
    struct State;
    explicit SymbolIndex(std::unique_ptr<State> state);
    std::unique_ptr<State> state_;
};

// Whether [address, address + length) lies inside executable mappings of this
// process, read from /proc/self/maps (covers JIT code and anonymous mappings
// too, not just ELF modules).
[[nodiscard]] Result<bool> is_executable_range(std::uint64_t address, std::uint64_t length);

}  // namespace ukp::elf
