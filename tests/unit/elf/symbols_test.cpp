// Unit tests of the modules-and-symbols layer, run against this very process:
// the test binary is built unstripped (its functions are in .symtab), while
// Debian's libc.so.6 is stripped to .dynsym, so both paths are exercised.
// The dynamic linker's own answer (dlsym) is the reference for addresses.
#include "elf/symbols.hpp"

#include <dlfcn.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

// A function of the test binary itself, with external linkage so that it is a
// global .symtab symbol; the empty asm keeps the compiler from folding it.
extern "C" [[gnu::noinline]] int ukp_elf_test_target(int value) {
    asm volatile("");
    return value * 7 + 3;
}

std::uintptr_t ukp_twin_a_address();  // twin_a.cpp
std::uintptr_t ukp_twin_b_address();  // twin_b.cpp

namespace ukp::elf {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

constexpr const char* libc_name = "libc.so.6";

std::uint64_t address_of(const void* pointer) { return reinterpret_cast<std::uint64_t>(pointer); }
std::uint64_t target_address() { return address_of(reinterpret_cast<const void*>(&ukp_elf_test_target)); }

SymbolIndex take_snapshot() {
    auto index = SymbolIndex::snapshot();
    EXPECT_TRUE(index.has_value()) << index.error().message;
    return std::move(*index);
}

struct DlCloser {
    void operator()(void* handle) const noexcept { dlclose(handle); }
};
using LibraryHandle = std::unique_ptr<void, DlCloser>;

LibraryHandle libc_handle() { return LibraryHandle(dlopen(libc_name, RTLD_NOW | RTLD_NOLOAD)); }

std::vector<std::string> names_of(const std::vector<Symbol>& symbols) {
    std::vector<std::string> names;
    for (const auto& symbol : symbols) names.push_back(symbol.name);
    return names;
}

TEST(SymbolIndex, ListsExecutableFirstUnderItsFileName) {
    const auto index = take_snapshot();
    ASSERT_FALSE(index.modules().empty());
    const auto executable = std::filesystem::read_symlink("/proc/self/exe");
    EXPECT_EQ(index.modules().front().path, executable.string());
    EXPECT_EQ(index.modules().front().name, executable.filename().string());
    EXPECT_FALSE(index.modules().front().executable_segments.empty());
}

TEST(SymbolIndex, FindsTestBinaryFunctionInSymtab) {
    const auto index = take_snapshot();
    const auto symbol = index.find_function("", "ukp_elf_test_target");
    ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
    EXPECT_EQ(symbol->address, target_address());
    EXPECT_GT(symbol->size, 0u);
    EXPECT_TRUE(symbol->is_global);
    EXPECT_EQ(symbol->module, index.modules().front().name);
}

TEST(SymbolIndex, FindsTestBinaryFunctionQualifiedByExecutableName) {
    const auto index = take_snapshot();
    const auto symbol = index.find_function(index.modules().front().name, "ukp_elf_test_target");
    ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
    EXPECT_EQ(symbol->address, target_address());
}

// Unqualified names resolve as dlsym(RTLD_DEFAULT) does: to libc normally,
// to the interceptor under a sanitizer runtime loaded ahead of libc.
TEST(SymbolIndex, FindsLibcFunctionsByUnqualifiedNameAsDlsymDoes) {
    const auto index = take_snapshot();
    for (const char* name : {"getpid", "write", "malloc"}) {
        const auto symbol = index.find_function("", name);
        ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
        const auto expected = address_of(dlsym(RTLD_DEFAULT, name));
        EXPECT_EQ(symbol->address, expected) << name;
        ASSERT_NE(index.module_containing(expected), nullptr) << name;
        EXPECT_EQ(symbol->module, index.module_containing(expected)->name) << name;
        EXPECT_GT(symbol->size, 0u) << name;
    }
}

TEST(SymbolIndex, FindsLibcGetpidWriteMallocInDynsymByQualifiedName) {
    const auto index = take_snapshot();
    const auto libc = libc_handle();
    ASSERT_NE(libc, nullptr) << dlerror();
    for (const char* name : {"getpid", "write", "malloc"}) {
        const auto symbol = index.find_function(libc_name, name);
        ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
        EXPECT_EQ(symbol->address, address_of(dlsym(libc.get(), name))) << name;
        EXPECT_TRUE(symbol->is_global) << name;
    }
}

TEST(SymbolIndex, AcceptsModuleByFullPath) {
    const auto index = take_snapshot();
    const auto libc = std::ranges::find(index.modules(), std::string(libc_name), &Module::name);
    ASSERT_NE(libc, index.modules().end());
    const auto by_path = index.find_function(libc->path, "getpid");
    ASSERT_TRUE(by_path.has_value()) << by_path.error().message;
    EXPECT_EQ(by_path->address, address_of(dlsym(RTLD_DEFAULT, "getpid")));
}

// libc has realpath@GLIBC_2.2.5 (hidden) and realpath@@GLIBC_2.3 (default)
// at different addresses; dlsym picks the default and so must we.
TEST(SymbolIndex, PicksDefaultVersionAmongVersionsAtDifferentAddresses) {
    const auto index = take_snapshot();
    const auto libc = libc_handle();
    ASSERT_NE(libc, nullptr) << dlerror();
    const auto symbol = index.find_function(libc_name, "realpath");
    ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
    EXPECT_EQ(symbol->address, address_of(dlsym(libc.get(), "realpath")));
}

// memcpy has two versions too, the default one an IFUNC; dlsym would return
// the resolved implementation, so only check that one definition is chosen.
TEST(SymbolIndex, ResolvesVersionedIfuncToOneDefinition) {
    const auto index = take_snapshot();
    const auto symbol = index.find_function(libc_name, "memcpy");
    ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
    EXPECT_TRUE(symbol->is_global);
    EXPECT_EQ(index.module_containing(symbol->address)->name, libc_name);
}

TEST(SymbolIndex, UnknownSymbolNamesTheSymbol) {
    const auto index = take_snapshot();
    const auto symbol = index.find_function("", "ukp_no_such_function");
    ASSERT_FALSE(symbol.has_value());
    EXPECT_EQ(symbol.error().code, Errc::UnknownSymbol);
    EXPECT_THAT(symbol.error().message, HasSubstr("'ukp_no_such_function'"));
}

TEST(SymbolIndex, UnknownSymbolInNamedModuleNamesBoth) {
    const auto index = take_snapshot();
    const auto symbol = index.find_function(libc_name, "ukp_elf_test_target");
    ASSERT_FALSE(symbol.has_value());
    EXPECT_EQ(symbol.error().code, Errc::UnknownSymbol);
    EXPECT_THAT(symbol.error().message, HasSubstr("'ukp_elf_test_target'"));
    EXPECT_THAT(symbol.error().message, HasSubstr(libc_name));
}

TEST(SymbolIndex, UnknownModuleListsLoadedModules) {
    const auto index = take_snapshot();
    const auto symbol = index.find_function("libukp_missing.so", "getpid");
    ASSERT_FALSE(symbol.has_value());
    EXPECT_EQ(symbol.error().code, Errc::UnknownModule);
    EXPECT_THAT(symbol.error().message, HasSubstr("'libukp_missing.so'"));
    EXPECT_THAT(symbol.error().message, HasSubstr(index.modules().front().name));
}

TEST(SymbolIndex, EmptySymbolNameIsInvalid) {
    const auto index = take_snapshot();
    const auto symbol = index.find_function("", "");
    ASSERT_FALSE(symbol.has_value());
    EXPECT_EQ(symbol.error().code, Errc::InvalidArgument);
}

TEST(SymbolIndex, FunctionContainingStartMiddleAndOnePastEnd) {
    const auto index = take_snapshot();
    const auto symbol = index.find_function("", "ukp_elf_test_target");
    ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
    ASSERT_GT(symbol->size, 1u);

    const auto at_start = index.function_containing(symbol->address);
    ASSERT_TRUE(at_start.has_value());
    EXPECT_EQ(at_start->name, "ukp_elf_test_target");
    EXPECT_EQ(at_start->address, symbol->address);

    const auto in_middle = index.function_containing(symbol->address + symbol->size / 2);
    ASSERT_TRUE(in_middle.has_value());
    EXPECT_EQ(in_middle->name, "ukp_elf_test_target");

    const auto at_last_byte = index.function_containing(symbol->address + symbol->size - 1);
    ASSERT_TRUE(at_last_byte.has_value());
    EXPECT_EQ(at_last_byte->name, "ukp_elf_test_target");

    // One past the end is padding or the next function, never this one.
    const auto past_end = index.function_containing(symbol->address + symbol->size);
    if (past_end) {
        EXPECT_NE(past_end->name, "ukp_elf_test_target");
    }
}

// getpid and __getpid are aliases at one address in libc.
TEST(SymbolIndex, FunctionContainingPrefersPlainNameAmongAliases) {
    const auto index = take_snapshot();
    const auto containing = index.function_containing(address_of(dlsym(RTLD_DEFAULT, "getpid")));
    ASSERT_TRUE(containing.has_value());
    EXPECT_EQ(containing->name, "getpid");
    EXPECT_EQ(containing->module, libc_name);
}

TEST(SymbolIndex, FunctionContainingDataIsNone) {
    const auto index = take_snapshot();
    int on_stack = 0;
    EXPECT_FALSE(index.function_containing(address_of(&on_stack)).has_value());
}

TEST(SymbolIndex, ModuleContainingLibcCode) {
    const auto index = take_snapshot();
    const auto* module = index.module_containing(address_of(dlsym(RTLD_DEFAULT, "getpid")));
    ASSERT_NE(module, nullptr);
    EXPECT_EQ(module->name, libc_name);
}

TEST(SymbolIndex, ModuleContainingTestBinaryCode) {
    const auto index = take_snapshot();
    const auto* module = index.module_containing(target_address());
    ASSERT_NE(module, nullptr);
    EXPECT_EQ(module, &index.modules().front());
}

TEST(SymbolIndex, ModuleContainingStackAddressIsNone) {
    const auto index = take_snapshot();
    int on_stack = 0;
    EXPECT_EQ(index.module_containing(address_of(&on_stack)), nullptr);
}

TEST(SymbolIndex, MatchFunctionsGlobInLibcIsSortedByAddress) {
    const auto index = take_snapshot();
    const auto matches = index.match_functions(libc_name, "getpi*");
    ASSERT_TRUE(matches.has_value()) << matches.error().message;
    EXPECT_THAT(names_of(*matches), Contains("getpid"));
    EXPECT_TRUE(std::ranges::is_sorted(*matches, {}, &Symbol::address));
    for (const auto& symbol : *matches) {
        EXPECT_TRUE(symbol.name.starts_with("getpi")) << symbol.name;
        EXPECT_EQ(symbol.module, libc_name);
    }
}

TEST(SymbolIndex, MatchFunctionsAcrossModulesFindsTestBinaryAndLibc) {
    const auto index = take_snapshot();
    const auto matches = index.match_functions("", "ukp_elf_test_targe?");
    ASSERT_TRUE(matches.has_value()) << matches.error().message;
    ASSERT_EQ(matches->size(), 1u);
    EXPECT_EQ(matches->front().address, target_address());

    const auto everywhere = index.match_functions("", "getpid");
    ASSERT_TRUE(everywhere.has_value()) << everywhere.error().message;
    EXPECT_THAT(names_of(*everywhere), Contains("getpid"));
}

TEST(SymbolIndex, MatchFunctionsInUnknownModuleFails) {
    const auto index = take_snapshot();
    const auto matches = index.match_functions("libukp_missing.so", "*");
    ASSERT_FALSE(matches.has_value());
    EXPECT_EQ(matches.error().code, Errc::UnknownModule);
}

TEST(SymbolIndex, SeveralLocalsOfOneNameAreAmbiguous) {
    ASSERT_NE(ukp_twin_a_address(), ukp_twin_b_address());
    const auto index = take_snapshot();

    const auto unqualified = index.find_function("", "ukp_twin");
    ASSERT_FALSE(unqualified.has_value());
    EXPECT_EQ(unqualified.error().code, Errc::AmbiguousSymbol);
    EXPECT_THAT(unqualified.error().message, HasSubstr("'ukp_twin'"));

    const auto qualified = index.find_function(index.modules().front().name, "ukp_twin");
    ASSERT_FALSE(qualified.has_value());
    EXPECT_EQ(qualified.error().code, Errc::AmbiguousSymbol);

    // Each twin is still found by address, as a local.
    for (const auto twin : {ukp_twin_a_address(), ukp_twin_b_address()}) {
        const auto containing = index.function_containing(twin);
        ASSERT_TRUE(containing.has_value());
        EXPECT_EQ(containing->name, "ukp_twin");
        EXPECT_EQ(containing->address, twin);
        EXPECT_FALSE(containing->is_global);
    }
}

TEST(SymbolIndex, ReadsVdsoSymbolsFromMemory) {
    if (getauxval(AT_SYSINFO_EHDR) == 0) GTEST_SKIP() << "this process has no vDSO";
    const auto index = take_snapshot();
    const auto vdso = std::ranges::find(index.modules(), std::string("linux-vdso.so.1"), &Module::name);
    ASSERT_NE(vdso, index.modules().end());
    const auto symbol = index.find_function("linux-vdso.so.1", "__vdso_clock_gettime");
    ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
    EXPECT_EQ(index.module_containing(symbol->address), &*vdso);
    const auto executable = is_executable_range(symbol->address, symbol->size);
    ASSERT_TRUE(executable.has_value()) << executable.error().message;
    EXPECT_TRUE(*executable);
}

TEST(SymbolIndex, LibraryOpenedAfterSnapshotAppearsInNewSnapshot) {
    struct Candidate {
        const char* soname;
        const char* function;
    };
    // libz and libm come first as the most common, but this binary usually
    // links both already (libelf needs libz, libstdc++ needs libm); the
    // others are small Debian base libraries that nothing here links.
    const std::array candidates{
        Candidate{"libz.so.1", "zlibVersion"},          Candidate{"libm.so.6", "cbrt"},
        Candidate{"libbz2.so.1.0", "BZ2_bzlibVersion"}, Candidate{"liblzma.so.5", "lzma_version_string"},
        Candidate{"libzstd.so.1", "ZSTD_versionNumber"}, Candidate{"libexpat.so.1", "XML_ExpatVersion"},
    };
    const Candidate* chosen = nullptr;
    for (const auto& candidate : candidates) {
        const bool exists = std::filesystem::exists(std::filesystem::path("/lib/x86_64-linux-gnu") / candidate.soname);
        const bool is_loaded = LibraryHandle(dlopen(candidate.soname, RTLD_NOW | RTLD_NOLOAD)) != nullptr;
        if (exists && !is_loaded) {
            chosen = &candidate;
            break;
        }
    }
    if (chosen == nullptr) GTEST_SKIP() << "no candidate library is both installed and not yet loaded";

    const auto before = take_snapshot();
    const LibraryHandle library(dlopen(chosen->soname, RTLD_NOW | RTLD_LOCAL));
    ASSERT_NE(library, nullptr) << dlerror();
    const auto after = take_snapshot();

    const auto stale = before.find_function(chosen->soname, chosen->function);
    ASSERT_FALSE(stale.has_value());
    EXPECT_EQ(stale.error().code, Errc::UnknownModule);

    const auto symbol = after.find_function(chosen->soname, chosen->function);
    ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
    EXPECT_EQ(symbol->address, address_of(dlsym(library.get(), chosen->function)));
}

// The first lookups race to load libc's table; all must see the same answer.
TEST(SymbolIndex, ConcurrentFirstLookupsAgree) {
    const auto index = take_snapshot();
    constexpr int thread_count = 8;
    std::vector<std::uint64_t> addresses(thread_count);
    std::vector<std::thread> threads;
    for (int thread = 0; thread < thread_count; ++thread) {
        threads.emplace_back([&, thread] {
            const auto symbol = index.find_function(libc_name, "getpid");
            addresses[thread] = symbol ? symbol->address : 0;
        });
    }
    for (auto& thread : threads) thread.join();
    for (const auto address : addresses) EXPECT_EQ(address, address_of(dlsym(RTLD_DEFAULT, "getpid")));
}

// Loaded tables index names by string_view; moving the index must keep them.
TEST(SymbolIndex, MovedIndexKeepsLoadedTables) {
    auto index = take_snapshot();
    ASSERT_TRUE(index.find_function(libc_name, "getpid").has_value());
    const SymbolIndex moved = std::move(index);
    const auto symbol = moved.find_function(libc_name, "getpid");
    ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
    EXPECT_EQ(symbol->address, address_of(dlsym(RTLD_DEFAULT, "getpid")));
}

// ---- is_executable_range ----

// An anonymous mapping unmapped when the test ends.
class Mapping {
public:
    Mapping(std::size_t length, int protection)
        : length_(length), address_(mmap(nullptr, length, protection, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) {}
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() {
        if (address_ != MAP_FAILED) munmap(address_, length_);
    }
    [[nodiscard]] bool is_mapped() const { return address_ != MAP_FAILED; }
    [[nodiscard]] std::uint64_t start() const { return address_of(address_); }

private:
    std::size_t length_;
    void* address_;
};

std::uint64_t page_size() { return static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE)); }

TEST(ExecutableRange, TrueForAFunction) {
    const auto index = take_snapshot();
    const auto symbol = index.find_function("", "ukp_elf_test_target");
    ASSERT_TRUE(symbol.has_value()) << symbol.error().message;
    const auto executable = is_executable_range(symbol->address, symbol->size);
    ASSERT_TRUE(executable.has_value()) << executable.error().message;
    EXPECT_TRUE(*executable);
}

TEST(ExecutableRange, FalseForStackAndHeap) {
    int on_stack = 0;
    const auto on_heap = std::make_unique<int>(0);
    for (const auto address : {address_of(&on_stack), address_of(on_heap.get())}) {
        const auto executable = is_executable_range(address, sizeof(int));
        ASSERT_TRUE(executable.has_value()) << executable.error().message;
        EXPECT_FALSE(*executable);
    }
}

// The page after libc's last executable segment is read-only data or a gap.
TEST(ExecutableRange, FalseForRangeCrossingOutOfText) {
    const auto index = take_snapshot();
    const auto libc = std::ranges::find(index.modules(), std::string(libc_name), &Module::name);
    ASSERT_NE(libc, index.modules().end());
    ASSERT_FALSE(libc->executable_segments.empty());
    const auto text_end = (libc->executable_segments.back().end + page_size() - 1) & ~(page_size() - 1);

    const auto inside = is_executable_range(text_end - 8, 8);
    ASSERT_TRUE(inside.has_value()) << inside.error().message;
    EXPECT_TRUE(*inside);
    const auto crossing = is_executable_range(text_end - 8, 16);
    ASSERT_TRUE(crossing.has_value()) << crossing.error().message;
    EXPECT_FALSE(*crossing);
}

// Two adjacent executable mappings that the kernel keeps apart (one of them
// backed by a file) count as one executable range; a read-only neighbour
// does not.
TEST(ExecutableRange, SpansAdjacentExecutableMappingsOnly) {
    const Mapping pages(2 * page_size(), PROT_READ | PROT_EXEC);
    ASSERT_TRUE(pages.is_mapped());
    const auto second_page = pages.start() + page_size();
    const auto file = std::unique_ptr<FILE, int (*)(FILE*)>(std::fopen("/proc/self/exe", "r"), &std::fclose);
    ASSERT_NE(file, nullptr);
    ASSERT_NE(mmap(reinterpret_cast<void*>(second_page), page_size(), PROT_READ | PROT_EXEC,
                   MAP_PRIVATE | MAP_FIXED, fileno(file.get()), 0),
              MAP_FAILED);

    const auto spanning = is_executable_range(second_page - 8, 16);
    ASSERT_TRUE(spanning.has_value()) << spanning.error().message;
    EXPECT_TRUE(*spanning);

    ASSERT_EQ(mprotect(reinterpret_cast<void*>(second_page), page_size(), PROT_READ), 0);
    const auto into_read_only = is_executable_range(second_page - 8, 16);
    ASSERT_TRUE(into_read_only.has_value()) << into_read_only.error().message;
    EXPECT_FALSE(*into_read_only);
}

TEST(ExecutableRange, RejectsEmptyAndWrappingRanges) {
    const auto empty = is_executable_range(target_address(), 0);
    ASSERT_FALSE(empty.has_value());
    EXPECT_EQ(empty.error().code, Errc::InvalidArgument);
    const auto wrapping = is_executable_range(UINT64_MAX - 4, 16);
    ASSERT_FALSE(wrapping.has_value());
    EXPECT_EQ(wrapping.error().code, Errc::InvalidArgument);
}

}  // namespace
}  // namespace ukp::elf
