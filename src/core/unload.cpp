// Probes in code the program unloads (dlclose).
//
// Once a library is unmapped, writing its original bytes back at a probe's
// address (what unregistering does) would write into whatever is mapped
// there next, and a breakpoint table entry for that address would claim
// someone else's int3.  dlclose is interposed: when the library it names
// is gone from the loaded modules afterwards, every probe in its address
// range is dropped without a write (Engine::forget_unmapped_code) and counts
// as unregistered.  A library that stays loaded (other references) keeps
// its probes.
//
// Known gaps: between the unmap inside dlclose and the drop, a thread that
// maps new code at the same addresses and runs an int3 there that is its
// own would be taken for ours (the window is the rest of one dlclose
// call); and glibc's own unloads (NSS and iconv modules, through its
// internal dlclose) are not seen.
#include <dlfcn.h>
#include <link.h>

#include <cstdint>
#include <cstring>
#include <optional>

#include "core/engine.hpp"
#include "os/linux/raw_syscall.hpp"

#define UKP_API __attribute__((visibility("default")))

namespace ukp::core {
namespace {

struct LoadedRange {
    std::uint64_t bias = 0;
    const char* name = nullptr;
    std::uint64_t start = 0, end = 0;
    bool found = false;
};

int find_module(dl_phdr_info* info, std::size_t, void* data) {
    auto& wanted = *static_cast<LoadedRange*>(data);
    if (info->dlpi_addr != wanted.bias || std::strcmp(info->dlpi_name, wanted.name) != 0) return 0;
    wanted.found = true;
    wanted.start = UINT64_MAX;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const auto& header = info->dlpi_phdr[i];
        if (header.p_type != PT_LOAD) continue;
        wanted.start = std::min<std::uint64_t>(wanted.start, info->dlpi_addr + header.p_vaddr);
        wanted.end = std::max<std::uint64_t>(wanted.end, info->dlpi_addr + header.p_vaddr + header.p_memsz);
    }
    return 1;
}

std::optional<LoadedRange> range_of(void* handle) {
    link_map* map = nullptr;
    if (handle == nullptr || dlinfo(handle, RTLD_DI_LINKMAP, &map) != 0 || map == nullptr || map->l_name == nullptr)
        return std::nullopt;
    LoadedRange range{.bias = map->l_addr, .name = map->l_name};
    dl_iterate_phdr(find_module, &range);
    if (!range.found || range.start >= range.end) return std::nullopt;
    return range;
}

}  // namespace
}  // namespace ukp::core

extern "C" UKP_API int dlclose(void* handle) {
    using Function = int (*)(void*);
    static const auto real = reinterpret_cast<Function>(dlsym(RTLD_NEXT, "dlclose"));
    if (real == nullptr) ukp::os::abort_with_message("ukprobes: dlclose has no next definition\n");
    auto range = ukp::core::range_of(handle);
    // The name lives in the link map, which dlclose may free: keep a copy.
    char name[4096] = {};
    if (range) {
        std::strncpy(name, range->name, sizeof name - 1);
        range->name = name;
    }
    const int result = real(handle);
    if (range) {
        ukp::core::LoadedRange after{.bias = range->bias, .name = name};
        dl_iterate_phdr(ukp::core::find_module, &after);
        if (!after.found) ukp::core::Engine::instance().forget_unmapped_code(range->start, range->end);
    }
    return result;
}
