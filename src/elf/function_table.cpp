// Reading function symbols with elfutils libelf, and indexing them.
//
// Facts this relies on (see function_table.hpp for the ELF side):
// - elf_version(EV_CURRENT) must be called once before any other libelf call
//   and is not itself thread-safe; after it, separate Elf handles may be used
//   from separate threads.
// - ELF_C_READ_MMAP maps the file read-only; the Elf handle needs the file
//   descriptor until elf_end, so the descriptor outlives the handle.
// - Symbol 0 of every symbol table is the reserved null entry.
// - An STT_FUNC/STT_GNU_IFUNC symbol with st_shndx == SHN_UNDEF is an import,
//   not a definition; st_value == 0 marks entries with no code address.
#include "elf/function_table.hpp"

#include <elf.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>

#include <fmt/format.h>

namespace ukp::elf::detail {

namespace {

// The largest vDSO image we are willing to copy.  Today's are ~8 KiB; the
// bound only guards against a corrupt header making us copy unmapped memory.
constexpr std::uint64_t largest_plausible_vdso = 1 << 20;

// The .gnu.version bit of a non-default version (binutils calls it
// VERSYM_HIDDEN; glibc's <elf.h> does not define it).
constexpr GElf_Versym versym_hidden = 0x8000;

class FileDescriptor {
public:
    explicit FileDescriptor(int descriptor) : descriptor_(descriptor) {}
    FileDescriptor(const FileDescriptor&) = delete;
    FileDescriptor& operator=(const FileDescriptor&) = delete;
    ~FileDescriptor() {
        if (descriptor_ >= 0) ::close(descriptor_);
    }
    [[nodiscard]] int get() const { return descriptor_; }

private:
    int descriptor_;
};

struct ElfCloser {
    void operator()(Elf* elf) const noexcept { elf_end(elf); }
};
using ElfHandle = std::unique_ptr<Elf, ElfCloser>;

void initialize_libelf_once() {
    static std::once_flag once;
    std::call_once(once, [] { elf_version(EV_CURRENT); });
}

std::unexpected<Error> libelf_error(std::string_view call, std::string_view what) {
    return make_error(Errc::SystemError, fmt::format("{} on '{}': {}", call, what, elf_errmsg(-1)));
}

// Appends the function definitions of one symbol table.  `versions` is the
// .gnu.version section that parallels it, or null.
void append_functions(Elf* elf, Elf_Scn* symbol_section, Elf_Scn* versions_section, std::uint64_t bias,
                      std::vector<FunctionEntry>& entries) {
    GElf_Shdr header;
    if (gelf_getshdr(symbol_section, &header) == nullptr || header.sh_entsize == 0) return;
    Elf_Data* symbols = elf_getdata(symbol_section, nullptr);
    if (symbols == nullptr) return;
    Elf_Data* versions = versions_section != nullptr ? elf_getdata(versions_section, nullptr) : nullptr;

    const auto count = header.sh_size / header.sh_entsize;
    for (std::uint64_t index = 1; index < count; ++index) {
        GElf_Sym symbol;
        if (gelf_getsym(symbols, static_cast<int>(index), &symbol) == nullptr) continue;
        const auto type = GELF_ST_TYPE(symbol.st_info);
        if (type != STT_FUNC && type != STT_GNU_IFUNC) continue;
        if (symbol.st_shndx == SHN_UNDEF || symbol.st_value == 0) continue;
        const char* raw_name = elf_strptr(elf, header.sh_link, symbol.st_name);
        if (raw_name == nullptr || raw_name[0] == '\0') continue;

        std::string_view name = raw_name;
        bool is_hidden_version = false;
        // "name@@VERSION" (default) or "name@VERSION" (hidden), as .symtab
        // may spell them; position 0 would be a name that is all version.
        if (const auto at = name.find('@'); at != std::string_view::npos && at > 0) {
            is_hidden_version = !name.substr(at).starts_with("@@");
            name = name.substr(0, at);
        }
        if (versions != nullptr) {
            GElf_Versym version;
            if (gelf_getversym(versions, static_cast<int>(index), &version) != nullptr &&
                (version & versym_hidden) != 0) {
                is_hidden_version = true;
            }
        }
        entries.push_back(FunctionEntry{
            .name = std::string(name),
            .address = bias + symbol.st_value,
            .size = symbol.st_size,
            .is_global = GELF_ST_BIND(symbol.st_info) != STB_LOCAL,
            .is_hidden_version = is_hidden_version,
            .is_ifunc = type == STT_GNU_IFUNC,
        });
    }
}

Result<std::vector<FunctionEntry>> read_functions(Elf* elf, std::uint64_t bias, std::string_view what) {
    if (elf_kind(elf) != ELF_K_ELF) {
        return make_error(Errc::InvalidArgument, fmt::format("'{}' is not an ELF object", what));
    }
    Elf_Scn* symtab = nullptr;
    Elf_Scn* dynsym = nullptr;
    Elf_Scn* versym = nullptr;
    GElf_Word versym_link = 0;
    for (Elf_Scn* section = elf_nextscn(elf, nullptr); section != nullptr;
         section = elf_nextscn(elf, section)) {
        GElf_Shdr header;
        if (gelf_getshdr(section, &header) == nullptr) return libelf_error("gelf_getshdr", what);
        switch (header.sh_type) {
            case SHT_SYMTAB: symtab = section; break;
            case SHT_DYNSYM: dynsym = section; break;
            case SHT_GNU_versym:
                versym = section;
                versym_link = header.sh_link;
                break;
            default: break;
        }
    }
    // .gnu.version parallels the table its sh_link names; that is .dynsym.
    if (versym != nullptr && (dynsym == nullptr || versym_link != elf_ndxscn(dynsym))) versym = nullptr;

    std::vector<FunctionEntry> entries;
    // .symtab first: FunctionTable keeps the first size it sees for a name.
    if (symtab != nullptr) append_functions(elf, symtab, nullptr, bias, entries);
    if (dynsym != nullptr) append_functions(elf, dynsym, versym, bias, entries);
    return entries;
}

std::size_t leading_underscores(std::string_view name) {
    const auto first_other = name.find_first_not_of('_');
    return first_other == std::string_view::npos ? name.size() : first_other;
}

}  // namespace

bool prefer_as_name(const FunctionEntry& candidate, const FunctionEntry& current) {
    if (candidate.is_global != current.is_global) return candidate.is_global;
    if (candidate.is_hidden_version != current.is_hidden_version) return !candidate.is_hidden_version;
    const auto candidate_underscores = leading_underscores(candidate.name);
    const auto current_underscores = leading_underscores(current.name);
    if (candidate_underscores != current_underscores) return candidate_underscores < current_underscores;
    return candidate.name < current.name;
}

FunctionTable::FunctionTable(std::vector<FunctionEntry> entries) {
    // 1. Order by address, then name; stable so that for equal (address,
    //    name) the .symtab entry stays ahead of the .dynsym one.
    std::ranges::stable_sort(entries, [](const FunctionEntry& left, const FunctionEntry& right) {
        return std::tie(left.address, left.name) < std::tie(right.address, right.name);
    });
    // 2. Merge entries naming the same code: several .dynsym versions of one
    //    name at one address, or a symbol present in both tables.
    for (auto& entry : entries) {
        if (!entries_.empty() && entries_.back().address == entry.address && entries_.back().name == entry.name) {
            auto& kept = entries_.back();
            if (kept.size == 0) kept.size = entry.size;
            kept.is_global = kept.is_global || entry.is_global;
            kept.is_hidden_version = kept.is_hidden_version && entry.is_hidden_version;
            continue;
        }
        entries_.push_back(std::move(entry));
    }
    // 3. Build the indexes only now: entries_ no longer changes, so the
    //    string_views into its names stay valid.
    highest_end_through_.reserve(entries_.size());
    addresses_.reserve(entries_.size());
    std::uint64_t highest_end = 0;
    for (std::uint32_t index = 0; index < entries_.size(); ++index) {
        const auto& entry = entries_[index];
        highest_end = std::max(highest_end, entry.address + entry.size);
        highest_end_through_.push_back(highest_end);
        addresses_.push_back(entry.address);
        indexes_by_name_[entry.name].push_back(index);
    }
}

std::span<const std::uint32_t> FunctionTable::indexes_named(std::string_view name) const {
    const auto found = indexes_by_name_.find(name);
    if (found == indexes_by_name_.end()) return {};
    return found->second;
}

const FunctionEntry* FunctionTable::entry_containing(std::uint64_t address) const {
    const auto after = std::ranges::upper_bound(addresses_, address);
    const FunctionEntry* best = nullptr;
    for (auto index = static_cast<std::size_t>(after - addresses_.begin()); index-- > 0;) {
        if (highest_end_through_[index] <= address) break;
        const auto& entry = entries_[index];
        if (address >= entry.address + entry.size) continue;
        if (best != nullptr && entry.address < best->address) break;  // best is the innermost already
        if (best == nullptr || prefer_as_name(entry, *best)) best = &entry;
    }
    return best;
}

Result<std::vector<FunctionEntry>> read_functions_from_file(const std::string& path, std::uint64_t bias) {
    initialize_libelf_once();
    const FileDescriptor file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (file.get() < 0) return make_system_error(fmt::format("open '{}'", path), errno);
    const ElfHandle elf(elf_begin(file.get(), ELF_C_READ_MMAP, nullptr));
    if (!elf) return libelf_error("elf_begin", path);
    return read_functions(elf.get(), bias, path);
}

Result<std::vector<FunctionEntry>> read_functions_from_memory(std::uint64_t image_address, std::uint64_t bias) {
    initialize_libelf_once();
    const auto what = fmt::format("ELF image at {:#x}", image_address);
    Elf64_Ehdr header;
    std::memcpy(&header, reinterpret_cast<const void*>(image_address), sizeof header);
    if (std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0 || header.e_ident[EI_CLASS] != ELFCLASS64) {
        return make_error(Errc::InvalidArgument, fmt::format("{} is not a 64-bit ELF object", what));
    }
    // The image ends with whichever table comes last; for the vDSO that is the
    // section header table.
    const std::uint64_t image_size =
        std::max<std::uint64_t>({sizeof header,
                                 header.e_shoff + std::uint64_t{header.e_shnum} * header.e_shentsize,
                                 header.e_phoff + std::uint64_t{header.e_phnum} * header.e_phentsize});
    if (image_size > largest_plausible_vdso) {
        return make_error(Errc::InvalidArgument,
                          fmt::format("{} claims {} bytes, more than a vDSO has", what, image_size));
    }
    std::vector<char> copy(image_size);
    std::memcpy(copy.data(), reinterpret_cast<const void*>(image_address), image_size);
    const ElfHandle elf(elf_memory(copy.data(), copy.size()));
    if (!elf) return libelf_error("elf_memory", what);
    return read_functions(elf.get(), bias, what);
}

}  // namespace ukp::elf::detail
