// The function symbols of one module, read from its ELF image, and the two
// indexes the symbol queries need (by address, by name).  Internal to src/elf.
//
// Facts this relies on:
// - A module may carry .symtab (every symbol, locals included), .dynsym (the
//   exported ones) or both.  Debian strips .symtab from its libraries, so
//   libc.so.6 has .dynsym only; an unstripped test binary has .symtab and, as
//   an executable, usually a small .dynsym.  We read both and merge entries
//   with the same name and address, keeping .symtab's size when it has one.
// - Symbol versions live beside .dynsym, not in its names: .gnu.version
//   (SHT_GNU_versym) holds one 16-bit entry per .dynsym entry, and bit 0x8000
//   (VERSYM_HIDDEN) marks a non-default version ("realpath@GLIBC_2.2.5"
//   beside the default "realpath@@GLIBC_2.3").  In .symtab the linker may keep
//   the version in the name itself: "name@@VERSION" is the default,
//   "name@VERSION" a hidden one; we strip the suffix and keep the fact.
// - The vDSO has no file on disk; its image is mapped whole (section headers
//   included) at getauxval(AT_SYSINFO_EHDR), so libelf can read a copy of it.
//   We copy it because elf_memory may write into the image it is given and
//   the vDSO mapping is read-only.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ukprobes/error.hpp"

namespace ukp::elf::detail {

struct FunctionEntry {
    std::string name;                // without any "@VERSION" suffix
    std::uint64_t address = 0;       // runtime: load bias + st_value
    std::uint64_t size = 0;          // st_size, 0 when unknown
    bool is_global = false;          // STB_GLOBAL, STB_WEAK or STB_GNU_UNIQUE
    bool is_hidden_version = false;  // a non-default symbol version
    bool is_ifunc = false;           // STT_GNU_IFUNC: the address is the resolver's
};

// Function entries sorted by address, deduplicated by (name, address), with
// a name index.  Immutable once built, so concurrent readers need no lock.
class FunctionTable {
public:
    FunctionTable() = default;
    explicit FunctionTable(std::vector<FunctionEntry> entries);

    // The name index holds string_views into entries_: moving keeps the
    // vector's buffer (and so every string) in place, copying would not.
    FunctionTable(const FunctionTable&) = delete;
    FunctionTable& operator=(const FunctionTable&) = delete;
    FunctionTable(FunctionTable&&) noexcept = default;
    FunctionTable& operator=(FunctionTable&&) noexcept = default;

    [[nodiscard]] std::span<const FunctionEntry> entries() const { return entries_; }

    // Indexes into entries() of every entry called `name`, in address order.
    [[nodiscard]] std::span<const std::uint32_t> indexes_named(std::string_view name) const;

    // The entry whose [address, address + size) holds `address`: the one
    // starting closest below it; among aliases, see prefer_as_name().
    [[nodiscard]] const FunctionEntry* entry_containing(std::uint64_t address) const;

private:
    std::vector<FunctionEntry> entries_;
    // highest_end_through_[i] = max end of entries_[0..i]; lets the backward
    // scan in entry_containing() stop as soon as nothing earlier can reach.
    std::vector<std::uint64_t> highest_end_through_;
    // entries_[i].address, dense: the binary search touches a few cache
    // lines instead of one 56-byte entry per step (registering a batch
    // searches once or twice per probe).
    std::vector<std::uint64_t> addresses_;
    std::unordered_map<std::string_view, std::vector<std::uint32_t>> indexes_by_name_;
};

// Whether `candidate` is a better name than `current` for the same code:
// global before local, default version before hidden, fewer leading
// underscores ("getpid" before "__getpid"), then alphabetical, so the choice
// never depends on table order.
[[nodiscard]] bool prefer_as_name(const FunctionEntry& candidate, const FunctionEntry& current);

// Reads the function symbols of the ELF file at `path`.  A file without any
// symbol table yields an empty list, not an error.
[[nodiscard]] Result<std::vector<FunctionEntry>> read_functions_from_file(const std::string& path,
                                                                          std::uint64_t bias);

// Reads the function symbols of an ELF image mapped in this process (the
// vDSO), from a private copy of it.
[[nodiscard]] Result<std::vector<FunctionEntry>> read_functions_from_memory(std::uint64_t image_address,
                                                                            std::uint64_t bias);

}  // namespace ukp::elf::detail
