// The flags through the trampolines.  They restore arithmetic flags with
// sahf plus an overflow trick and fall back to popfq for anything else
// (asm_pt_regs.hpp), so every arithmetic combination must survive both ways
// (into handlers and back to the program), a handler's change to any of them
// must take effect, and a handler's change to a system flag (DF, AC, ID, TF)
// must take effect through the popfq fallback.  Each test runs on the three
// trampolines: an optimized probe at a function's entry, one mid-function,
// and the return trampoline of a Kretprobe.
#include <gtest/gtest.h>
#include <signal.h>
#include <ucontext.h>

#include <cstdint>
#include <string>
#include <vector>

#include "targets.hpp"
#include "ukprobes/ukprobes.hpp"

namespace {

constexpr std::uint64_t carry = 0x1, reserved = 0x2, parity = 0x4, adjust = 0x10, zero = 0x40, sign = 0x80,
                        trap = 0x100, interrupt = 0x200, direction = 0x400, overflow = 0x800,
                        alignment_check = 0x40000, cpuid_allowed = 0x200000;
constexpr std::uint64_t arithmetic = carry | parity | adjust | zero | sign | overflow;

// Every combination of the six arithmetic flags, with DF clear and set.
std::vector<std::uint64_t> every_arithmetic_combination() {
    constexpr std::uint64_t bits[] = {carry, parity, adjust, zero, sign, overflow};
    std::vector<std::uint64_t> all;
    for (unsigned mask = 0; mask < 64; ++mask) {
        std::uint64_t flags = 0;
        for (unsigned bit = 0; bit < 6; ++bit)
            if (mask & (1u << bit)) flags |= bits[bit];
        all.push_back(flags);
        all.push_back(flags | direction);
    }
    return all;
}

// A probe of the kind under test whose handler calls `change(regs)`.
// Kprobe and Kretprobe are not movable once registered: both live here.
struct FlagsProbe {
    ukp::Kprobe kprobe;
    ukp::Kretprobe kretprobe;
    bool is_return = false;
};

template <class Change>
void register_flags_probe(FlagsProbe& probe, const std::string& path, Change change) {
    if (path == "return") {
        probe.is_return = true;
        probe.kretprobe.kp.addr = function_address(flags_entry_function);
        probe.kretprobe.handler = [change](ukp::KretprobeInstance&, ukp::Regs& regs) {
            change(regs);
            return 0;
        };
        auto registered = ukp::register_kretprobe(probe.kretprobe);
        ASSERT_TRUE(registered) << registered.error().message;
    } else {
        probe.kprobe.addr = path == "optimized_entry" ? function_address(flags_entry_function)
                                                       : static_cast<void*>(flags_site);
        probe.kprobe.pre_handler = [change](ukp::Kprobe&, ukp::Regs& regs) {
            change(regs);
            return 0;
        };
        auto registered = ukp::register_kprobe(probe.kprobe);
        ASSERT_TRUE(registered) << registered.error().message;
    }
    auto listed = ukp::list_probes();
    ASSERT_EQ(listed.size(), 1u);
    EXPECT_EQ(listed[0].kind, "optimized") << ukp::format_probe_list();
}

class FlagsThroughTrampoline : public ::testing::TestWithParam<const char*> {};

TEST_P(FlagsThroughTrampoline, EveryArithmeticCombinationSurvivesAndHandlersSeeIt) {
    const auto cases = every_arithmetic_combination();
    std::vector<std::uint64_t> reference;
    for (std::uint64_t flags : cases) reference.push_back(flags_run(flags | reserved | interrupt));

    std::uint64_t seen = 0;
    FlagsProbe probe;
    register_flags_probe(probe, GetParam(), [&seen](ukp::Regs& regs) { seen = regs.flags; });
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const std::uint64_t in = cases[i] | reserved | interrupt;
        EXPECT_EQ(flags_run(in), reference[i]) << std::hex << "flags " << in;
        EXPECT_EQ(seen & (arithmetic | direction), cases[i]) << std::hex << "flags " << in;
    }
}

TEST_P(FlagsThroughTrampoline, HandlerSettingArithmeticFlagsTakesEffect) {
    std::uint64_t wanted = 0;
    FlagsProbe probe;
    register_flags_probe(probe, GetParam(),
                         [&wanted](ukp::Regs& regs) { regs.flags = (regs.flags & ~(arithmetic | direction)) | wanted; });
    for (std::uint64_t flags : every_arithmetic_combination()) {
        wanted = flags;
        // Start from the complement, so every flag changes.
        const std::uint64_t in = (~flags & arithmetic) | reserved | interrupt;
        EXPECT_EQ(flags_run(in) & (arithmetic | direction), flags) << std::hex << "wanted " << flags;
    }
}

TEST_P(FlagsThroughTrampoline, HandlerSettingAlignmentCheckAndIdTakesEffect) {
    FlagsProbe probe;
    register_flags_probe(probe, GetParam(),
                         [](ukp::Regs& regs) { regs.flags |= alignment_check | cpuid_allowed | zero; });
    const std::uint64_t out = flags_run(reserved | interrupt);
    EXPECT_EQ(out & (alignment_check | cpuid_allowed | zero), alignment_check | cpuid_allowed | zero) << std::hex << out;
}

TEST_P(FlagsThroughTrampoline, HandlerClearingAProgramsDirectionFlagTakesEffect) {
    FlagsProbe probe;
    register_flags_probe(probe, GetParam(), [](ukp::Regs& regs) { regs.flags &= ~direction; });
    EXPECT_EQ(flags_run(direction | carry | reserved | interrupt) & (direction | carry), carry);
}

// TF from a handler: the program's own SIGTRAP handler must see a step.
int steps_seen = 0;
void count_step_and_stop(int, siginfo_t* info, void* context) {
    if (info->si_code != TRAP_TRACE) return;
    ++steps_seen;
    static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_EFL] &= ~static_cast<greg_t>(trap);
}

TEST_P(FlagsThroughTrampoline, HandlerSettingTrapFlagSingleStepsTheProgram) {
    struct sigaction action{}, previous{};
    action.sa_sigaction = count_step_and_stop;
    action.sa_flags = SA_SIGINFO;
    ASSERT_EQ(sigaction(SIGTRAP, &action, &previous), 0);
    FlagsProbe probe;
    register_flags_probe(probe, GetParam(), [](ukp::Regs& regs) { regs.flags |= trap; });
    steps_seen = 0;
    const std::uint64_t out = flags_run(reserved | interrupt);
    EXPECT_GE(steps_seen, 1);
    EXPECT_EQ(out & trap, 0u);
    sigaction(SIGTRAP, &previous, nullptr);
}

// The narrow return trampoline (a function reached only through a pointer):
// the arithmetic flags are dead to such a caller and are not restored, but
// handlers see them, and DF, TF and the other system flags still come back
// or take effect.
class FlagsThroughANarrowReturn : public ::testing::Test {
protected:
    template <class Change>
    void watch(Change change) {
        probe.kp.addr = function_address(flags_narrow_function);
        probe.handler = [change](ukp::KretprobeInstance&, ukp::Regs& regs) {
            change(regs);
            return 0;
        };
        auto registered = ukp::register_kretprobe(probe);
        ASSERT_TRUE(registered) << registered.error().message;
        auto listed = ukp::list_probes();
        ASSERT_EQ(listed.size(), 1u);
        EXPECT_EQ(listed[0].kind, "optimized") << ukp::format_probe_list();
    }
    ukp::Kretprobe probe;
};

TEST_F(FlagsThroughANarrowReturn, HandlersSeeEveryArithmeticCombinationAndDfComesBack) {
    std::uint64_t seen = 0;
    watch([&seen](ukp::Regs& regs) { seen = regs.flags; });
    for (std::uint64_t flags : every_arithmetic_combination()) {
        const std::uint64_t in = flags | reserved | interrupt;
        EXPECT_EQ(flags_run_narrow(in) & direction, flags & direction) << std::hex << "flags " << in;
        EXPECT_EQ(seen & (arithmetic | direction), flags) << std::hex << "flags " << in;
    }
}

TEST_F(FlagsThroughANarrowReturn, HandlerSettingAlignmentCheckAndIdTakesEffect) {
    watch([](ukp::Regs& regs) { regs.flags |= alignment_check | cpuid_allowed; });
    const std::uint64_t out = flags_run_narrow(reserved | interrupt);
    EXPECT_EQ(out & (alignment_check | cpuid_allowed), alignment_check | cpuid_allowed) << std::hex << out;
}

TEST_F(FlagsThroughANarrowReturn, HandlerClearingAProgramsDirectionFlagTakesEffect) {
    watch([](ukp::Regs& regs) { regs.flags &= ~direction; });
    EXPECT_EQ(flags_run_narrow(direction | reserved | interrupt) & direction, 0u);
}

TEST_F(FlagsThroughANarrowReturn, HandlerSettingTrapFlagSingleStepsTheProgram) {
    struct sigaction action{}, previous{};
    action.sa_sigaction = count_step_and_stop;
    action.sa_flags = SA_SIGINFO;
    ASSERT_EQ(sigaction(SIGTRAP, &action, &previous), 0);
    watch([](ukp::Regs& regs) { regs.flags |= trap; });
    steps_seen = 0;
    const std::uint64_t out = flags_run_narrow(reserved | interrupt);
    EXPECT_GE(steps_seen, 1);
    EXPECT_EQ(out & trap, 0u);
    sigaction(SIGTRAP, &previous, nullptr);
}

INSTANTIATE_TEST_SUITE_P(Paths, FlagsThroughTrampoline,
                         ::testing::Values("optimized_entry", "optimized_mid", "return"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
