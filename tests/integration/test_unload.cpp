// Probes in a library the program dlcloses: dropped without a write into
// the unmapped range, counted as unregistered, harmless to unregister
// afterwards; the library loaded again runs its own code.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstring>

#include "ukprobes/ukprobes.hpp"

namespace {

using Target = int (*)(int);

bool listed(std::uint64_t address) {
    for (auto& info : ukp::list_probes())
        if (info.address == address) return true;
    return false;
}

TEST(Unload, ProbesInADlclosedLibraryAreDroppedWithoutWritingThere) {
    void* library = dlopen(UKP_TEST_UNLOAD_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(library, nullptr) << dlerror();
    auto target = reinterpret_cast<Target>(dlsym(library, "unload_target"));
    ASSERT_NE(target, nullptr);
    std::atomic<int> entries{0}, returns{0};
    ukp::Kprobe entry{.addr = reinterpret_cast<void*>(target), .pre_handler = [&](ukp::Kprobe&, ukp::Regs&) {
                          ++entries;
                          return 0;
                      }};
    ukp::Kprobe inside{.addr = reinterpret_cast<void*>(target), .offset = 4,
                       .pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; },
                       .flags = ukp::flag_no_optimize};
    ukp::Kretprobe exit{.kp = {.symbol_name = "unload_target"}, .handler = [&](ukp::KretprobeInstance&, ukp::Regs&) {
                            ++returns;
                            return 0;
                        }};
    ASSERT_TRUE(ukp::register_kprobe(entry));
    auto inside_registered = ukp::register_kprobe(inside);
    ASSERT_TRUE(ukp::register_kretprobe(exit));
    EXPECT_EQ(target(2), 7);
    EXPECT_EQ(entries, 1);
    EXPECT_EQ(returns, 1);
    const auto address = reinterpret_cast<std::uint64_t>(entry.address());
    ASSERT_TRUE(listed(address)) << ukp::format_probe_list();

    ASSERT_EQ(dlclose(library), 0);
    EXPECT_FALSE(entry.is_registered());
    EXPECT_FALSE(inside.is_registered());
    EXPECT_FALSE(exit.is_registered());
    EXPECT_FALSE(listed(address)) << ukp::format_probe_list();
    EXPECT_EQ(entry.nhit(), 1u) << "counters stay";

    // Something else at the library's old place: unregistering must not
    // write the library's bytes into it.
    const std::uint64_t page = address & ~std::uint64_t{4095};
    void* other = mmap(reinterpret_cast<void*>(page), 8192, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (other == reinterpret_cast<void*>(page)) {
        std::memset(other, 0x5a, 8192);
        ukp::unregister_kprobe(entry);
        ukp::unregister_kprobe(inside);
        ukp::unregister_kretprobe(exit);
        const auto* bytes = static_cast<const unsigned char*>(other);
        for (std::size_t i = 0; i < 8192; ++i) ASSERT_EQ(bytes[i], 0x5a) << "written at " << page + i;
        munmap(other, 8192);
    } else {
        if (other != MAP_FAILED) munmap(other, 8192);
        ukp::unregister_kprobe(entry);
        ukp::unregister_kprobe(inside);
        ukp::unregister_kretprobe(exit);
    }
    (void)inside_registered;

    // Loaded again (likely at the same place): its own code, and probes
    // can be placed on it again.
    library = dlopen(UKP_TEST_UNLOAD_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(library, nullptr) << dlerror();
    target = reinterpret_cast<Target>(dlsym(library, "unload_target"));
    EXPECT_EQ(target(5), 16);
    EXPECT_EQ(entries, 1);
    entry.addr = reinterpret_cast<void*>(target);
    ASSERT_TRUE(ukp::register_kprobe(entry));
    EXPECT_EQ(target(5), 16);
    EXPECT_EQ(entries, 2);
    ukp::unregister_kprobe(entry);
    dlclose(library);
}

// A dlclose that does not unload (another reference holds the library)
// keeps its probes.
TEST(Unload, ADlcloseThatLeavesTheLibraryLoadedKeepsItsProbes) {
    void* first = dlopen(UKP_TEST_UNLOAD_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    void* second = dlopen(UKP_TEST_UNLOAD_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    ASSERT_TRUE(first && second) << dlerror();
    auto target = reinterpret_cast<Target>(dlsym(first, "unload_target"));
    std::atomic<int> hits{0};
    ukp::Kprobe probe{.addr = reinterpret_cast<void*>(target), .pre_handler = [&](ukp::Kprobe&, ukp::Regs&) {
                          ++hits;
                          return 0;
                      }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(dlclose(first), 0);
    EXPECT_TRUE(probe.is_registered());
    EXPECT_EQ(target(1), 4);
    EXPECT_EQ(hits, 1);
    ukp::unregister_kprobe(probe);
    EXPECT_EQ(target(1), 4);
    EXPECT_EQ(hits, 1);
    dlclose(second);
}

}  // namespace
