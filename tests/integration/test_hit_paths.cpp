// One behaviour per test: what a handler sees and what the program sees on
// each hit path (boosted, emulated, post-handler trap).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "targets.hpp"
#include "ukprobes/ukprobes.hpp"

namespace {

// The int3 paths are what this file tests: keep these probes from being
// upgraded to jumps (test_optimized.cpp covers those).
ukp::Kprobe probe_at(void* address, ukp::PreHandler pre = {}, ukp::PostHandler post = {}) {
    return ukp::Kprobe{.addr = address,
                       .pre_handler = std::move(pre),
                       .post_handler = std::move(post),
                       .flags = ukp::flag_no_optimize};
}

#define ASSERT_REGISTERED(probe)                                                    \
    do {                                                                            \
        auto registered_ = ukp::register_kprobe(probe);                             \
        ASSERT_TRUE(registered_) << registered_.error().message;                    \
    } while (0)

TEST(HitPath, PreHandlerSeesArgumentsAndProbeAddress) {
    std::uint64_t seen_di = 0, seen_ip = 0;
    auto probe = probe_at(function_address(boost_target), [&](ukp::Kprobe&, ukp::Regs& regs) {
        seen_di = regs.di;
        seen_ip = regs.ip;
        return 0;
    });
    ASSERT_REGISTERED(probe);
    EXPECT_EQ(boost_target(20), 41);
    EXPECT_EQ(seen_di, 20u);
    EXPECT_EQ(seen_ip, reinterpret_cast<std::uint64_t>(function_address(boost_target)));
    EXPECT_EQ(probe.nhit(), 1u);
    EXPECT_EQ(probe.nmissed(), 0u);
}

TEST(HitPath, BoostedProbeOnLibcFunctionBySymbol) {
    std::atomic<int> hits{0};
    ukp::Kprobe probe{.symbol_name = "libc.so.6:getppid", .pre_handler = [&](ukp::Kprobe&, ukp::Regs&) {
                          ++hits;
                          return 0;
                      }};
    ASSERT_REGISTERED(probe);
    pid_t expected = getppid();
    EXPECT_EQ(getppid(), expected);
    EXPECT_EQ(hits.load(), 2);
}

TEST(HitPath, PostHandlerSeesRegistersAfterTheInstruction) {
    std::uint64_t post_ax = 0, post_ip = 0;
    auto probe = probe_at(
        function_address(boost_target), [](ukp::Kprobe&, ukp::Regs&) { return 0; },
        [&](ukp::Kprobe&, ukp::Regs& regs, unsigned long) {
            post_ax = regs.ax;
            post_ip = regs.ip;
        });
    ASSERT_REGISTERED(probe);
    EXPECT_EQ(boost_target(3), 7);
    EXPECT_EQ(post_ax & 0xffffffff, 7u);  // lea eax, [rdi+rdi+1] has run
    EXPECT_EQ(post_ip, reinterpret_cast<std::uint64_t>(function_address(boost_target)) + 4);
}

TEST(HitPath, PostHandlerRunsAfterEmulatedInstruction) {
    std::uint64_t post_ip = 0, pre_sp = 0, post_sp = 0;
    auto probe = probe_at(
        function_address(push_target),
        [&](ukp::Kprobe&, ukp::Regs& regs) {
            pre_sp = regs.sp;
            return 0;
        },
        [&](ukp::Kprobe&, ukp::Regs& regs, unsigned long) {
            post_ip = regs.ip;
            post_sp = regs.sp;
        });
    ASSERT_REGISTERED(probe);
    EXPECT_EQ(push_target(10), 15);
    EXPECT_EQ(post_ip, reinterpret_cast<std::uint64_t>(function_address(push_target)) + 1);
    EXPECT_EQ(post_sp, pre_sp - 8);
}

struct EmulationCase {
    const char* name;
    void* site;
    int (*call)(int);
    int argument;
    int expected;
};

class Emulated : public ::testing::TestWithParam<EmulationCase> {};

TEST_P(Emulated, InstructionRunsCorrectlyUnderProbe) {
    const auto& c = GetParam();
    int hits = 0;
    auto probe = probe_at(c.site, [&](ukp::Kprobe&, ukp::Regs&) {
        ++hits;
        return 0;
    });
    ASSERT_REGISTERED(probe);
    auto listed = ukp::list_probes();
    ASSERT_EQ(listed.size(), 1u);
    EXPECT_EQ(listed[0].kind, "emulated") << listed[0].instruction;
    EXPECT_EQ(c.call(c.argument), c.expected);
    EXPECT_EQ(hits, 1);
}

INSTANTIATE_TEST_SUITE_P(
    Forms, Emulated,
    ::testing::Values(EmulationCase{"push", function_address(push_target), push_target, 4, 9},
                      EmulationCase{"pop", push_target_pop, push_target, 4, 9},
                      EmulationCase{"ret", push_target_ret, push_target, 4, 9},
                      EmulationCase{"jcc_taken", jcc_target_branch, jcc_target, 0, 2},
                      EmulationCase{"jcc_not_taken", jcc_target_branch, jcc_target, 5, 1},
                      EmulationCase{"jmp", function_address(jmp_target), jmp_target, 6, 6},
                      EmulationCase{"call_rel32", call_target_call, call_target, 4, 10},
                      EmulationCase{"call_register", indirect_call_register, indirect_call_target, 1, 3},
                      EmulationCase{"call_memory_rip_relative", indirect_call_memory, indirect_call_target, 1, 3},
                      EmulationCase{"endbr64", function_address(nop_target), nop_target, 8, 8}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(HitPath, RipRelativeLoadIsRebasedInTheSlot) {
    auto probe = probe_at(function_address(riprel_target), [](ukp::Kprobe&, ukp::Regs&) { return 0; });
    ASSERT_REGISTERED(probe);
    EXPECT_EQ(ukp::list_probes().at(0).kind, "boosted");
    EXPECT_EQ(riprel_target(), riprel_value);
    EXPECT_EQ(probe.nhit(), 1u);
}

TEST(HitPath, AggregateProbesRunInRegistrationOrder) {
    std::string order;
    auto first = probe_at(function_address(boost_target), [&](ukp::Kprobe&, ukp::Regs&) {
        order += "1";
        return 0;
    });
    auto second = probe_at(function_address(boost_target), [&](ukp::Kprobe&, ukp::Regs&) {
        order += "2";
        return 0;
    });
    ASSERT_REGISTERED(first);
    ASSERT_REGISTERED(second);
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(order, "12");
    ukp::unregister_kprobe(first);
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(order, "122");
    EXPECT_EQ(first.nhit(), 1u);
    EXPECT_EQ(second.nhit(), 2u);
}

TEST(HitPath, HandlerCallingAProbedFunctionCountsAMiss) {
    auto inner = probe_at(function_address(add_one), [](ukp::Kprobe&, ukp::Regs&) { return 0; });
    int inner_result = 0;
    auto outer = probe_at(function_address(boost_target), [&](ukp::Kprobe&, ukp::Regs&) {
        inner_result = add_one(41);  // hits `inner` while a handler runs
        return 0;
    });
    ASSERT_REGISTERED(inner);
    ASSERT_REGISTERED(outer);
    EXPECT_EQ(boost_target(2), 5);
    EXPECT_EQ(inner_result, 42);
    EXPECT_EQ(inner.nhit(), 0u);
    EXPECT_EQ(inner.nmissed(), 1u);
    EXPECT_EQ(add_one(1), 2);  // outside a handler it is handled again
    EXPECT_EQ(inner.nhit(), 1u);
}

// Fault injection the kernel way: the pre-handler sets the return value,
// returns to the caller, and returns non-zero so the function never runs.
TEST(HitPath, PreHandlerReturningNonZeroSkipsTheFunction) {
    auto probe = probe_at(function_address(boost_target), [](ukp::Kprobe&, ukp::Regs& regs) {
        regs.ax = static_cast<unsigned long>(-12);  // -ENOMEM
        regs.ip = *reinterpret_cast<const unsigned long*>(regs.sp);
        regs.sp += 8;
        return 1;
    });
    ASSERT_REGISTERED(probe);
    EXPECT_EQ(boost_target(5), -12);
    ukp::unregister_kprobe(probe);
    EXPECT_EQ(boost_target(5), 11);
}

TEST(HitPath, PreHandlerChangingArgumentsChangesTheResult) {
    auto probe = probe_at(function_address(boost_target), [](ukp::Kprobe&, ukp::Regs& regs) {
        regs.di = 100;
        return 0;
    });
    ASSERT_REGISTERED(probe);
    EXPECT_EQ(boost_target(5), 201);
}

TEST(HitPath, DisabledProbeDoesNotFireAndEnableRearmsIt) {
    int hits = 0;
    ukp::Kprobe probe{.addr = function_address(boost_target),
                      .pre_handler = [&](ukp::Kprobe&, ukp::Regs&) {
                          ++hits;
                          return 0;
                      },
                      .flags = ukp::flag_disabled | ukp::flag_no_optimize};
    ASSERT_REGISTERED(probe);
    EXPECT_EQ(*reinterpret_cast<unsigned char*>(function_address(boost_target)), 0x8d);  // not armed
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(hits, 0);
    ASSERT_TRUE(ukp::enable_kprobe(probe));
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(hits, 1);
    ASSERT_TRUE(ukp::disable_kprobe(probe));
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(hits, 1);
    EXPECT_NE(ukp::format_probe_list().find("[DISABLED]"), std::string::npos);
}

// The register-clobber invariant: known values in every general register and
// the flags, through each hit path, must come out unchanged; handlers must
// see them too.
class ClobberInvariant : public ::testing::TestWithParam<const char*> {};

TEST_P(ClobberInvariant, RegistersAndFlagsSurviveTheProbe) {
    std::string path = GetParam();
    clobber_state in{};
    std::uint64_t* words = &in.rax;
    for (int i = 0; i < 15; ++i) words[i] = 0x0101010101010101ull * (i + 1) ^ 0x8000000000000001ull;
    in.flags = 0x8d7 | 0x2 | 0x200;  // CF PF AF ZF SF OF, reserved bit 1, IF
    clobber_state reference{}, probed{};
    clobber_run(&in, &reference);

    bool optimized = path.starts_with("optimized");
    void* site = path == "optimized_entry"     ? function_address(clobber_entry_function)
                 : path.ends_with("boosted") ? static_cast<void*>(clobber_site_boost)
                 : path == "emulated"        ? static_cast<void*>(clobber_site_emulate)
                                             : static_cast<void*>(clobber_site_post);
    ukp::Regs seen{};
    auto probe = probe_at(
        site,
        [&](ukp::Kprobe&, ukp::Regs& regs) {
            seen = regs;
            return 0;
        },
        path.ends_with("post") ? ukp::PostHandler([](ukp::Kprobe&, ukp::Regs&, unsigned long) {}) : ukp::PostHandler());
    if (optimized) probe.flags = 0;
    ASSERT_REGISTERED(probe);
    EXPECT_EQ(ukp::list_probes().at(0).kind, optimized ? "optimized" : path == "post" ? "boosted+post-trap" : path)
        << ukp::format_probe_list();
    clobber_run(&in, &probed);
    EXPECT_EQ(probe.nhit(), 1u);
    EXPECT_EQ(std::memcmp(&reference, &probed, sizeof reference), 0);
    EXPECT_EQ(seen.ax, in.rax);
    EXPECT_EQ(seen.bx, in.rbx);
    EXPECT_EQ(seen.cx, in.rcx);
    EXPECT_EQ(seen.dx, in.rdx);
    EXPECT_EQ(seen.si, in.rsi);
    EXPECT_EQ(seen.di, in.rdi);
    EXPECT_EQ(seen.bp, in.rbp);
    EXPECT_EQ(seen.r8, in.r8);
    EXPECT_EQ(seen.r9, in.r9);
    EXPECT_EQ(seen.r10, in.r10);
    EXPECT_EQ(seen.r11, in.r11);
    EXPECT_EQ(seen.r12, in.r12);
    EXPECT_EQ(seen.r13, in.r13);
    EXPECT_EQ(seen.r14, in.r14);
    EXPECT_EQ(seen.r15, in.r15);
    // At the entry probe the call has pushed a return address.
    EXPECT_EQ(seen.sp, path == "optimized_entry" ? reference.rsp - 8 : reference.rsp);
    EXPECT_EQ(seen.flags & 0xcd7, in.flags & 0xcd7);
    EXPECT_EQ(seen.ip, reinterpret_cast<std::uint64_t>(site));
}

INSTANTIATE_TEST_SUITE_P(Paths, ClobberInvariant,
                         ::testing::Values("boosted", "emulated", "post", "optimized_boosted", "optimized_post",
                                           "optimized_entry"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
