// Signals shared with the program: its own breakpoints, its own handlers
// installed before or after ours, faults in slots and in handlers, and a
// program that single-steps itself with TF.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "targets.hpp"
#include "ukprobes/ukprobes.hpp"

namespace {

std::atomic<int> program_traps{0};
void program_trap_handler(int, siginfo_t*, void*) { ++program_traps; }

ukp::Kprobe counting_probe(void* address, std::atomic<int>& hits) {
    return ukp::Kprobe{.addr = address, .pre_handler = [&hits](ukp::Kprobe&, ukp::Regs&) {
                           ++hits;
                           return 0;
                       }};
}

// The program's handler for the length of one test.
class ScopedHandler {
public:
    ScopedHandler(int signal, void (*handler)(int, siginfo_t*, void*)) : signal_(signal) {
        struct sigaction action {};
        action.sa_sigaction = handler;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        EXPECT_EQ(sigaction(signal, &action, &previous_), 0);
        program_traps = 0;
    }
    ~ScopedHandler() { sigaction(signal_, &previous_, nullptr); }

private:
    int signal_;
    struct sigaction previous_ {};
};

TEST(Signals, ProgramsOwnBreakpointReachesItsHandlerInstalledBefore) {
    ScopedHandler program_handler(SIGTRAP, program_trap_handler);
    std::atomic<int> hits{0};
    auto probe = counting_probe(function_address(boost_target), hits);
    ASSERT_TRUE(ukp::register_kprobe(probe));
    EXPECT_EQ(own_breakpoint(), 7);
    EXPECT_EQ(program_traps.load(), 1);
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(hits.load(), 1);
}

TEST(Signals, HandlerInstalledAfterRegistrationDoesNotBreakProbes) {
    std::atomic<int> hits{0};
    auto probe = counting_probe(function_address(boost_target), hits);
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ScopedHandler program_handler(SIGTRAP, program_trap_handler);  // interposed: recorded, ours stays
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(hits.load(), 1);
    EXPECT_EQ(own_breakpoint(), 7);
    EXPECT_EQ(program_traps.load(), 1);
    // The program reads back what it set, not ukprobes' handler.
    struct sigaction current {};
    ASSERT_EQ(sigaction(SIGTRAP, nullptr, &current), 0);
    EXPECT_EQ(current.sa_sigaction, program_trap_handler);
    // signal() goes through the same path.
    EXPECT_NE(signal(SIGTRAP, SIG_DFL), SIG_ERR);
    EXPECT_EQ(boost_target(2), 5);
    EXPECT_EQ(hits.load(), 2);
}

TEST(Signals, ProgramsOwnBreakpointWithoutHandlerKillsWithSigtrap) {
    std::atomic<int> hits{0};
    auto probe = counting_probe(function_address(boost_target), hits);
    ASSERT_TRUE(ukp::register_kprobe(probe));
    EXPECT_EXIT(own_breakpoint(), ::testing::KilledBySignal(SIGTRAP), "");
}

std::atomic<std::uint64_t> fault_pc{0};
std::atomic<std::uint64_t> fault_address{0};
void skip_faulting_load(int, siginfo_t* info, void* context) {
    auto* uc = static_cast<ucontext_t*>(context);
    fault_pc = static_cast<std::uint64_t>(uc->uc_mcontext.gregs[REG_RIP]);
    fault_address = reinterpret_cast<std::uint64_t>(info->si_addr);
    uc->uc_mcontext.gregs[REG_RAX] = -1;
    uc->uc_mcontext.gregs[REG_RIP] += 2;  // mov eax, [rdi] is 2 bytes
}

TEST(Signals, FaultInSlotIsSeenAtTheProbedAddress) {
    ScopedHandler program_handler(SIGSEGV, skip_faulting_load);
    std::atomic<int> hits{0};
    auto probe = counting_probe(function_address(load_target), hits);
    ASSERT_TRUE(ukp::register_kprobe(probe));
    auto* bad = reinterpret_cast<const int*>(0x10);
    EXPECT_EQ(load_target(bad), -1);
    EXPECT_EQ(fault_pc.load(), reinterpret_cast<std::uint64_t>(function_address(load_target)));
    EXPECT_EQ(fault_address.load(), 0x10u);
    EXPECT_EQ(hits.load(), 1);
    int good = 42;
    EXPECT_EQ(load_target(&good), 42);
}

TEST(Signals, FaultInSlotWithoutHandlerKillsWithSigsegv) {
    std::atomic<int> hits{0};
    auto probe = counting_probe(function_address(load_target), hits);
    ASSERT_TRUE(ukp::register_kprobe(probe));
    EXPECT_EXIT(load_target(reinterpret_cast<const int*>(0x10)), ::testing::KilledBySignal(SIGSEGV), "");
}

TEST(Signals, FaultInHandlerIsAbandonedCountedAndReported) {
    volatile int* null_pointer = reinterpret_cast<volatile int*>(0x10);  // unmapped; not nullptr, which is UB a sanitizer would stop
    ukp::Kprobe probe{.addr = function_address(boost_target), .pre_handler = [&](ukp::Kprobe&, ukp::Regs& regs) {
                          regs.di = 1000;  // discarded with the rest of the abandoned call
                          return *null_pointer;
                      }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ::testing::internal::CaptureStderr();
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(boost_target(2), 5);
    std::string reported = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(probe.nfault(), 2u);
    EXPECT_EQ(probe.nhit(), 2u);
    EXPECT_NE(reported.find("faulted (signal 11"), std::string::npos) << reported;
    EXPECT_EQ(reported.find("faulted", reported.find("faulted") + 1), std::string::npos) << "reported once";
}

// A faulting handler's register changes are undone on the optimized path
// too, where the first handler's undo copy is the trampoline's backup and a
// later handler's is a copy of what the handlers before it left.  Three
// cases: the faulting handler alone; after a handler that changes nothing;
// after one that changes r12 (which must stay changed).
class FaultInOptimizedHandler : public ::testing::TestWithParam<int> {};

TEST_P(FaultInOptimizedHandler, UndoesOnlyItsOwnRegisterChanges) {
    const int handlers_before = GetParam();
    clobber_state in{};
    std::uint64_t* words = &in.rax;
    for (int i = 0; i < 15; ++i) words[i] = 0x0101010101010101ull * (i + 1);
    in.flags = 0x8d7 | 0x2 | 0x200;
    clobber_state expected{}, probed{};
    clobber_run(&in, &expected);
    constexpr std::uint64_t changed_r12 = 0x1234;
    if (handlers_before == 2) expected.r12 = changed_r12;

    volatile int* null_pointer = reinterpret_cast<volatile int*>(0x10);  // unmapped
    bool armed = false;
    ukp::Kprobe first{.addr = clobber_site_boost, .pre_handler = [&](ukp::Kprobe&, ukp::Regs& regs) {
                          if (handlers_before == 2) regs.r12 = changed_r12;
                          return 0;
                      }};
    ukp::Kprobe faulting{.addr = clobber_site_boost, .pre_handler = [&](ukp::Kprobe&, ukp::Regs& regs) {
                             if (!armed) return 0;
                             std::uint64_t* fields = &regs.r15;
                             for (std::size_t i = 0; i < sizeof regs / sizeof *fields; ++i) fields[i] = ~fields[i];
                             return *null_pointer;
                         }};
    if (handlers_before > 0) {
        ASSERT_TRUE(ukp::register_kprobe(first));
    }
    ASSERT_TRUE(ukp::register_kprobe(faulting));
    ASSERT_EQ(ukp::list_probes().at(0).kind, "optimized") << ukp::format_probe_list();
    // A first hit gives this thread its record, so that with one probe the
    // faulting hit takes the dispatcher's common path (whose handler call
    // escapes to the trampoline itself).
    clobber_run(&in, &probed);
    armed = true;
    scrub_stack_below();  // the undo must not pass on the first hit's leftovers
    ::testing::internal::CaptureStderr();
    clobber_run(&in, &probed);
    (void)::testing::internal::GetCapturedStderr();
    EXPECT_EQ(faulting.nfault(), 1u);
    EXPECT_EQ(std::memcmp(&expected, &probed, sizeof expected), 0);
    EXPECT_EQ(probed.r12, expected.r12);
}

INSTANTIATE_TEST_SUITE_P(HandlersBefore, FaultInOptimizedHandler, ::testing::Values(0, 1, 2));

TEST(Signals, FaultHandlerIsOfferedTheFaultFirst) {
    volatile int* null_pointer = reinterpret_cast<volatile int*>(0x10);  // unmapped; not nullptr, which is UB a sanitizer would stop
    int trap_number = -1;
    ukp::Kprobe probe{.addr = function_address(boost_target),
                      .pre_handler = [&](ukp::Kprobe&, ukp::Regs&) { return *null_pointer; },
                      .fault_handler = [&](ukp::Kprobe&, ukp::Regs&, int trapnr) {
                          trap_number = trapnr;
                          return 0;  // not fixed: the handler call is abandoned
                      }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ::testing::internal::CaptureStderr();
    EXPECT_EQ(boost_target(1), 3);
    ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(trap_number, 14);  // #PF
    EXPECT_EQ(probe.nfault(), 1u);
}

TEST(Signals, AbortPolicyEndsTheProcessWithAMessage) {
    volatile int* null_pointer = reinterpret_cast<volatile int*>(0x10);  // unmapped; not nullptr, which is UB a sanitizer would stop
    ukp::Kprobe probe{.addr = function_address(boost_target),
                      .pre_handler = [&](ukp::Kprobe&, ukp::Regs&) { return *null_pointer; }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ukp::set_handler_fault_policy(ukp::HandlerFaultPolicy::Abort);
    EXPECT_EXIT(boost_target(1), ::testing::KilledBySignal(SIGABRT), "handler of probe at 0x[0-9a-f]+ faulted");
    ukp::set_handler_fault_policy(ukp::HandlerFaultPolicy::Recover);
}

// TF: the program single-steps itself; its handler records each step.
std::vector<std::uint64_t>* steps = nullptr;
void record_step(int, siginfo_t* info, void* context) {
    if (info->si_code != TRAP_TRACE) return;
    steps->push_back(static_cast<std::uint64_t>(static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RIP]));
}

std::vector<std::uint64_t> record_single_steps(void (*run)() = single_step_run) {
    std::vector<std::uint64_t> recorded;
    recorded.reserve(64);
    steps = &recorded;
    run();
    steps = nullptr;
    return recorded;
}

TEST(Signals, ProgramSingleSteppingThroughProbesSeesTheSameSteps) {
    ScopedHandler program_handler(SIGTRAP, record_step);
    auto reference = record_single_steps();
    ASSERT_GE(reference.size(), 5u);

    auto first = reinterpret_cast<std::uint64_t>(single_step_first);
    std::atomic<int> hits{0};
    auto boosted = counting_probe(reinterpret_cast<void*>(first), hits);       // lea rax, [rax+1]
    auto emulated = counting_probe(reinterpret_cast<void*>(first + 4), hits);  // push rbx
    auto nop = counting_probe(reinterpret_cast<void*>(first + 6), hits);       // nop
    ukp::Kprobe with_post{.addr = reinterpret_cast<void*>(first + 7),          // lea rcx, [rcx+2]
                          .pre_handler = [&](ukp::Kprobe&, ukp::Regs&) {
                              ++hits;
                              return 0;
                          },
                          .post_handler = [](ukp::Kprobe&, ukp::Regs&, unsigned long) {}};
    ukp::Kprobe* probes[] = {&boosted, &emulated, &nop, &with_post};
    ASSERT_TRUE(ukp::register_kprobes(probes));
    // The last probe's region (lea rcx; pushfq) holds no other probe: it is
    // optimized, so the steps also cross a trampoline.
    auto listed = ukp::list_probes();
    ASSERT_EQ(listed.size(), 4u);
    EXPECT_EQ(listed.back().kind, "optimized") << ukp::format_probe_list();
    EXPECT_EQ(listed.front().kind, "boosted") << ukp::format_probe_list();
    auto probed = record_single_steps();
    EXPECT_EQ(hits.load(), 4);
    EXPECT_EQ(probed, reference);
}

// The same through a call to a function with a return probe: the steps
// inside the entry's trampoline and the return trampoline (and its
// handlers) are ours and never reach the program.

class SingleStepThroughReturnProbe : public ::testing::TestWithParam<unsigned> {};

TEST_P(SingleStepThroughReturnProbe, ProgramSeesTheSameSteps) {
    ScopedHandler program_handler(SIGTRAP, record_step);
    auto reference = record_single_steps(single_step_call_run);
    ASSERT_GE(reference.size(), 6u);
    std::atomic<int> entries{0}, returns{0};
    ukp::Kretprobe probe{.kp = {.addr = function_address(step_callee), .flags = GetParam()},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             returns += regs.ax == 42 ? 1 : 100;
                             return 0;
                         },
                         .entry_handler = [&](ukp::KretprobeInstance&, ukp::Regs&) {
                             ++entries;
                             return 0;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    auto listed = ukp::list_probes();
    ASSERT_EQ(listed.size(), 1u);
    EXPECT_EQ(listed[0].kind, GetParam() == 0 ? "optimized" : "boosted") << ukp::format_probe_list();
    auto probed = record_single_steps(single_step_call_run);
    EXPECT_EQ(entries.load(), 1);
    EXPECT_EQ(returns.load(), 1);
    EXPECT_EQ(probed, reference);
}

INSTANTIATE_TEST_SUITE_P(Signals, SingleStepThroughReturnProbe, ::testing::Values(0u, ukp::flag_no_optimize),
                         [](const auto& info) { return info.param ? "Int3" : "Optimized"; });

}  // namespace

namespace {

TEST(Signals, HandlerReplacedByRawSyscallIsTakenBackAtNextRegistration) {
    std::atomic<int> hits{0};
    auto first = counting_probe(function_address(boost_target), hits);
    ASSERT_TRUE(ukp::register_kprobe(first));
    // Behind libc's back: the kernel disposition now points at the program.
    struct kernel_sigaction {
        void (*handler)(int, siginfo_t*, void*);
        unsigned long flags;
        void (*restorer)();
        unsigned long mask;
    } current{}, raw{};
    ASSERT_EQ(syscall(SYS_rt_sigaction, SIGTRAP, nullptr, &current, 8), 0);
    raw = current;  // keeps glibc's restorer and SA_RESTORER
    raw.handler = program_trap_handler;
    ASSERT_EQ(syscall(SYS_rt_sigaction, SIGTRAP, &raw, nullptr, 8), 0);

    auto second = counting_probe(function_address(push_target), hits);
    ASSERT_TRUE(ukp::register_kprobe(second));  // repairs the disposition
    program_traps = 0;
    EXPECT_EQ(boost_target(1), 3);
    EXPECT_EQ(push_target(1), 6);
    EXPECT_EQ(hits.load(), 2);
    EXPECT_EQ(own_breakpoint(), 7);
    EXPECT_EQ(program_traps.load(), 1) << "the program's handler, recorded from the raw call, still gets its traps";
    struct sigaction reset {};
    reset.sa_handler = SIG_DFL;
    sigaction(SIGTRAP, &reset, nullptr);
}

}  // namespace
