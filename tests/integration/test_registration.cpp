// Registration: resolving symbols, refusing what cannot be probed with the
// specific error, batches that roll back, and code restored byte for byte.
#include <gtest/gtest.h>
#include <dlfcn.h>
#include <link.h>

#include <cstring>
#include <memory>
#include <vector>

#include "targets.hpp"
#include "ukprobes/ukprobes.hpp"

namespace {

ukp::Kprobe probe_on(std::string symbol, std::uint64_t offset = 0) {
    return ukp::Kprobe{.symbol_name = std::move(symbol), .offset = offset,
                       .pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; }};
}

ukp::Errc refusal(ukp::Kprobe& probe) {
    auto registered = ukp::register_kprobe(probe);
    EXPECT_FALSE(registered) << "registered at " << probe.address();
    return registered ? ukp::Errc::InvalidArgument : registered.error().code;
}

TEST(Registration, SymbolPlusOffsetResolvesInsideTheFunction) {
    auto probe = probe_on("jcc_target", 2);  // the jz after test edi, edi
    ASSERT_TRUE(ukp::register_kprobe(probe));
    EXPECT_EQ(probe.address(), static_cast<void*>(jcc_target_branch));
    EXPECT_EQ(probe.addr, static_cast<void*>(jcc_target_branch));  // filled in, as the kernel does
    EXPECT_EQ(jcc_target(0), 2);
    EXPECT_EQ(probe.nhit(), 1u);
}

TEST(Registration, ModuleQualifiedSymbol) {
    auto probe = probe_on("libc.so.6:getpid");
    ASSERT_TRUE(ukp::register_kprobe(probe));
    EXPECT_EQ(probe.address(), dlsym(RTLD_DEFAULT, "getpid"));
}

TEST(Registration, UnknownSymbolIsRefused) {
    auto probe = probe_on("no_such_function_anywhere");
    EXPECT_EQ(refusal(probe), ukp::Errc::UnknownSymbol);
}

TEST(Registration, UnknownModuleIsRefused) {
    auto probe = probe_on("libnothere.so.9:getpid");
    EXPECT_EQ(refusal(probe), ukp::Errc::UnknownModule);
}

TEST(Registration, OffsetInsideAnInstructionIsRefusedWithEilseq) {
    auto probe = probe_on("boost_target", 1);  // inside lea eax, [rdi+rdi+1]
    auto registered = ukp::register_kprobe(probe);
    ASSERT_FALSE(registered);
    EXPECT_EQ(registered.error().code, ukp::Errc::NotInstructionBoundary);
    EXPECT_EQ(registered.error().to_errno(), EILSEQ);
    EXPECT_NE(registered.error().message.find("boost_target+0x1"), std::string::npos) << registered.error().message;
}

TEST(Registration, OffsetBeyondTheFunctionIsRefused) {
    auto probe = probe_on("boost_target", 64);
    EXPECT_EQ(refusal(probe), ukp::Errc::InvalidArgument);
}

TEST(Registration, DataAddressIsRefusedAsNotExecutable) {
    ukp::Kprobe probe{.addr = &riprel_value};
    EXPECT_EQ(refusal(probe), ukp::Errc::NotExecutable);
}

TEST(Registration, AddressAndSymbolTogetherAreRefused) {
    ukp::Kprobe probe{.addr = function_address(boost_target), .symbol_name = "boost_target"};
    EXPECT_EQ(refusal(probe), ukp::Errc::InvalidArgument);
}

TEST(Registration, ProgramsOwnBreakpointInstructionIsRefused) {
    ukp::Kprobe probe{.addr = function_address(own_breakpoint)};
    auto registered = ukp::register_kprobe(probe);
    ASSERT_FALSE(registered);
    EXPECT_EQ(registered.error().code, ukp::Errc::UnprobeableInstruction);
    EXPECT_NE(registered.error().message.find("int3"), std::string::npos) << registered.error().message;
}

TEST(Registration, UkprobesOwnCodeIsBlacklisted) {
    ukp::Kprobe probe{.addr = reinterpret_cast<void*>(&ukp::list_probes)};
    EXPECT_EQ(refusal(probe), ukp::Errc::Blacklisted);
}

TEST(Registration, UserBlacklistRangeIsRefused) {
    auto start = reinterpret_cast<std::uint64_t>(function_address(add_one));
    ukp::blacklist_range(start, start + 4);
    ukp::Kprobe probe{.addr = function_address(add_one)};
    EXPECT_EQ(refusal(probe), ukp::Errc::Blacklisted);
}

TEST(Registration, RegisteringTheSameProbeTwiceIsRefused) {
    auto probe = probe_on("boost_target");
    ASSERT_TRUE(ukp::register_kprobe(probe));
    EXPECT_EQ(refusal(probe), ukp::Errc::AlreadyRegistered);
}

TEST(Registration, FailedBatchRollsBackEverythingItRegistered) {
    auto first = probe_on("boost_target");
    auto second = probe_on("push_target");
    auto bad = probe_on("no_such_function_anywhere");
    ukp::Kprobe* batch[] = {&first, &second, &bad};
    auto registered = ukp::register_kprobes(batch);
    ASSERT_FALSE(registered);
    EXPECT_EQ(registered.error().code, ukp::Errc::UnknownSymbol);
    EXPECT_FALSE(first.is_registered());
    EXPECT_FALSE(second.is_registered());
    EXPECT_EQ(*reinterpret_cast<unsigned char*>(function_address(boost_target)), 0x8d);
    EXPECT_EQ(*reinterpret_cast<unsigned char*>(function_address(push_target)), 0x53);
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(first.nhit(), 0u);
    EXPECT_TRUE(ukp::list_probes().empty());
}

TEST(Registration, ReRegistrationAfterUnregisterWorks) {
    auto probe = probe_on("boost_target");
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ukp::unregister_kprobe(probe);
    auto again = ukp::register_kprobe(probe);
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(probe.nhit(), 1u);
}

// The executable segments of the test binary and of libc, as bytes.
std::vector<std::vector<unsigned char>> snapshot_text() {
    std::vector<std::vector<unsigned char>> segments;
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) {
            auto& out = *static_cast<std::vector<std::vector<unsigned char>>*>(data);
            std::string name = info->dlpi_name;
            if (!name.empty() && name.find("libc.so") == std::string::npos) return 0;
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const auto& header = info->dlpi_phdr[i];
                if (header.p_type != PT_LOAD || !(header.p_flags & PF_X)) continue;
                auto* start = reinterpret_cast<unsigned char*>(info->dlpi_addr + header.p_vaddr);
                out.emplace_back(start, start + header.p_memsz);
            }
            return 0;
        },
        &segments);
    return segments;
}

TEST(Registration, UnregisterRestoresTheTextSegmentsExactly) {
    auto before = snapshot_text();
    ASSERT_GE(before.size(), 2u);
    // Kprobe is not movable (the engine holds its address): keep them on the heap.
    std::vector<std::unique_ptr<ukp::Kprobe>> probes;
    for (const char* name : {"boost_target", "push_target", "jcc_target", "call_target", "nop_target",
                             "riprel_target", "libc.so.6:getpid", "libc.so.6:write", "libc.so.6:malloc"})
        probes.emplace_back(new ukp::Kprobe(probe_on(name)));
    probes.emplace_back(new ukp::Kprobe(probe_on("jcc_target", 2)));
    std::vector<ukp::Kprobe*> pointers;
    for (auto& probe : probes) pointers.push_back(probe.get());
    auto registered = ukp::register_kprobes(pointers);
    ASSERT_TRUE(registered) << registered.error().message;
    EXPECT_NE(snapshot_text(), before);
    EXPECT_EQ(jcc_target(0) + push_target(1) + call_target(1), 2 + 6 + 4);
    ukp::unregister_kprobes(pointers);
    EXPECT_EQ(snapshot_text(), before);
}

}  // namespace

namespace {

TEST(Registration, IfuncSymbolProbesTheBoundImplementation) {
    auto probe = probe_on("libc.so.6:memcpy");
    auto registered = ukp::register_kprobe(probe);
    ASSERT_TRUE(registered) << registered.error().message;
    // The implementation the dynamic linker bound, not the IFUNC resolver.
    EXPECT_EQ(probe.address(), dlsym(RTLD_DEFAULT, "memcpy"));
    auto* volatile copy = &memcpy;  // a real call, not an inlined copy
    char from[64] = "payload", to[64] = {};
    copy(to, from, sizeof from);
    EXPECT_STREQ(to, "payload");
    EXPECT_GE(probe.nhit(), 1u);
}

}  // namespace

extern "C" void ukprobes_blacklist_function(unsigned long address);  // what NOKPROBE_SYMBOL calls

namespace {

TEST(Registration, BlacklistedFunctionRefusesEveryOffsetInIt) {
    ukprobes_blacklist_function(reinterpret_cast<unsigned long>(function_address(blacklisted_target)));
    auto at_entry = probe_on("blacklisted_target");
    EXPECT_EQ(refusal(at_entry), ukp::Errc::Blacklisted);
    auto inside = probe_on("blacklisted_target", 5);  // the second add
    EXPECT_EQ(refusal(inside), ukp::Errc::Blacklisted);
    auto elsewhere = probe_on("jcc_target");
    EXPECT_TRUE(ukp::register_kprobe(elsewhere));
}

TEST(Registration, ListingShowsDemangledNames) {
    ukp::Kprobe probe{.symbol_name = "libstdc++.so.6:_ZNSt9exceptionD2Ev",
                      .pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; }};
    auto registered = ukp::register_kprobe(probe);
    ASSERT_TRUE(registered) << registered.error().message;
    EXPECT_NE(ukp::format_probe_list().find("std::exception::~exception()"), std::string::npos)
        << ukp::format_probe_list();
}

}  // namespace
