// Return probes (kretprobes): the return handler sees what the function
// returned, and real control flow (recursion, longjmp, exceptions,
// pthread_exit, threads, fork, unregistration under pending calls) keeps
// working.  The probed functions are plain C++ here: noinline, with
// volatile locals so that their bodies stay calls of their own.
#include <cpuid.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <setjmp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "targets.hpp"
#include "ukprobes/ukprobes.hpp"

extern "C" {
[[gnu::noinline]] long kret_add(long a, long b) {
    volatile long x = a, y = b;
    return x + y;
}

[[gnu::noinline]] long kret_recurse(long depth) {
    volatile long here = depth;
    if (here == 0) return 0;
    long below = kret_recurse(here - 1);
    asm volatile("" ::: "memory");  // not a tail call, not a loop
    return below + 1;
}

jmp_buf kret_jump_target;
[[gnu::noinline]] long kret_maybe_longjmp(long value) {
    volatile long x = value;
    if (x > 0) longjmp(kret_jump_target, 1);
    return x + 100;
}

[[gnu::noinline]] long kret_maybe_throw(long value) {
    volatile long x = value;
    if (x > 0) throw std::runtime_error("thrown through a return probe");
    return x + 200;
}

[[gnu::noinline]] void kret_maybe_exit(long value) {
    volatile long x = value;
    if (x > 0) pthread_exit(reinterpret_cast<void*>(x));
}

// read(2) is a cancellation point: a pending pthread_cancel acts inside it.
[[gnu::noinline]] long kret_blocking_read(int fd) {
    volatile int descriptor = fd;
    char byte;
    return read(descriptor, &byte, 1);
}

[[gnu::noinline]] double kret_scale(double x) {
    volatile double y = x;
    return y * 2.5;
}

[[gnu::noinline]] long double kret_scale_long(long double x) {
    volatile long double y = x;
    return y * 3;
}

[[gnu::noinline]] long kret_fork(void) {
    volatile long pid = fork();
    return pid;
}
}

namespace {

struct Cleanup {
    std::atomic<int>& count;
    ~Cleanup() { ++count; }
};

std::atomic<int> cleanups{0};

[[gnu::noinline]] long kret_throw_through_cleanup(long value) {
    Cleanup cleanup{cleanups};
    volatile long result = kret_maybe_throw(value);
    return result + 1;
}

void* address_of(auto* function) { return reinterpret_cast<void*>(function); }

ukp::Kretprobe counting(void* function, std::atomic<int>& returns, unsigned flags = 0, int maxactive = 0) {
    return ukp::Kretprobe{.kp = {.addr = function, .flags = flags},
                          .handler = [&returns](ukp::KretprobeInstance&, ukp::Regs&) {
                              ++returns;
                              return 0;
                          },
                          .maxactive = maxactive};
}

class KretprobeBasic : public testing::TestWithParam<unsigned> {};

TEST_P(KretprobeBasic, ReturnHandlerSeesReturnValueAndRealReturnAddress) {
    std::uint64_t entry_return_address = 0, handler_ip = 0, handler_ax = 0, instance_return = 0;
    ukp::Kretprobe probe{.kp = {.addr = address_of(kret_add), .flags = GetParam()},
                         .handler = [&](ukp::KretprobeInstance& instance, ukp::Regs& regs) {
                             handler_ip = regs.ip;
                             handler_ax = regs_return_value(&regs);
                             instance_return = instance.return_address;
                             return 0;
                         },
                         .entry_handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             entry_return_address = *reinterpret_cast<const std::uint64_t*>(regs.sp);
                             return 0;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    bool optimized = false;
    for (auto& info : ukp::list_probes())
        if (info.address == reinterpret_cast<std::uint64_t>(address_of(kret_add))) optimized = info.kind == "optimized";
    EXPECT_EQ(optimized, GetParam() == 0) << ukp::format_probe_list();

    EXPECT_EQ(kret_add(40, 2), 42);
    EXPECT_EQ(handler_ax, 42u);
    EXPECT_NE(entry_return_address, 0u);
    EXPECT_EQ(handler_ip, entry_return_address);
    EXPECT_EQ(instance_return, entry_return_address);
    EXPECT_EQ(probe.npending(), 0u);
    ukp::unregister_kretprobe(probe);
    EXPECT_EQ(kret_add(1, 2), 3);
}

TEST_P(KretprobeBasic, HandlerCanChangeTheReturnValue) {
    ukp::Kretprobe probe{.kp = {.addr = address_of(kret_add), .flags = GetParam()},
                         .handler = [](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             regs.ax = 1000;
                             return 0;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    EXPECT_EQ(kret_add(1, 1), 1000);
}

INSTANTIATE_TEST_SUITE_P(Kretprobe, KretprobeBasic, testing::Values(0u, ukp::flag_no_optimize),
                         [](const auto& info) { return info.param ? "Int3" : "Optimized"; });

// What the return trampolines give back.  Called through a pointer, a
// function's caller relies on the ABI only: the callee-saved registers and
// the return values (rax, rdx, ymm0, ymm1), which is all the narrow
// trampoline keeps.  Called directly by code compiled with -fipa-ra, the
// caller may keep values in any register the callee leaves alone: the full
// trampoline keeps every general and vector register.  The handlers run
// glibc's vector string functions and floating-point code.
class KretprobeRegisters : public testing::TestWithParam<unsigned> {
protected:
    void SetUp() override {
        if (!__builtin_cpu_supports("avx")) GTEST_SKIP() << "needs AVX (the targets use ymm registers)";
    }
};

// What a handler built with -mavx2 may do to every vector register, then
// glibc's (vector) memset and scalar floating point.
int clobbering_return_handler(ukp::Regs& regs) {
    clobber_ymm_registers();
    static char buffer[4096];
    std::memset(buffer, static_cast<int>(regs.ax), sizeof buffer);
    volatile double scaled = static_cast<double>(regs.dx) * 1.5;
    (void)scaled;
    return 0;
}

bool is_optimized(const void* address) {
    for (auto& info : ukp::list_probes())
        if (info.address == reinterpret_cast<std::uint64_t>(address)) return info.kind == "optimized";
    return false;
}

TEST_P(KretprobeRegisters, AReturnThroughAPointerKeepsWhatTheAbiPromises) {
    alignas(32) std::uint64_t in[16], out[16] = {};
    for (int i = 0; i < 16; ++i) in[i] = 0x0101010101010101ull * static_cast<std::uint64_t>(i + 1) + 0x1000 * i;
    std::uint64_t seen_ax = 0, seen_bx = 0;
    std::atomic<int> returns{0};
    ukp::Kretprobe probe{.kp = {.addr = function_address(return_values_function), .flags = GetParam()},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             seen_ax = regs.ax;
                             seen_bx = regs.bx;
                             ++returns;
                             return clobbering_return_handler(regs);
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    EXPECT_EQ(is_optimized(function_address(return_values_function)), GetParam() == 0) << ukp::format_probe_list();
    for (int round = 0; round < 3; ++round) {
        return_values_run(in, out);
        for (int i = 0; i < 16; ++i) EXPECT_EQ(out[i], in[i]) << "word " << i << " round " << round;
    }
    EXPECT_EQ(returns, 3);
    EXPECT_EQ(seen_ax, in[6]);
    EXPECT_EQ(seen_bx, in[0]);
}

// A return handler that changes every register and then faults is
// abandoned: what the caller can see (callee-saved registers, return
// values) comes back as the function left it.
TEST_P(KretprobeRegisters, AFaultingReturnHandlersChangesAreUndone) {
    alignas(32) std::uint64_t in[16], out[16] = {};
    for (int i = 0; i < 16; ++i) in[i] = 0x0202020202020202ull * static_cast<std::uint64_t>(i + 1) + 0x100 * i;
    volatile int* unmapped = reinterpret_cast<volatile int*>(0x10);
    ukp::Kretprobe probe{.kp = {.addr = function_address(return_values_function), .flags = GetParam()},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             std::uint64_t* fields = &regs.r15;
                             for (std::uint64_t* field = fields; field <= &regs.di; ++field) *field = ~*field;
                             clobber_ymm_registers();
                             return *unmapped;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    return_values_run(in, out);  // a first return gives this thread its record: the next takes the common path
    scrub_stack_below();
    ::testing::internal::CaptureStderr();
    std::memset(out, 0, sizeof out);
    return_values_run(in, out);
    (void)::testing::internal::GetCapturedStderr();
    for (int i = 0; i < 16; ++i) EXPECT_EQ(out[i], in[i]) << "word " << i;
}

TEST_P(KretprobeRegisters, AReturnHandlersNewReturnValuesTakeEffect) {
    alignas(32) std::uint64_t in[16] = {}, out[16] = {};
    ukp::Kretprobe probe{.kp = {.addr = function_address(return_values_function), .flags = GetParam()},
                         .handler = [](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             clobbering_return_handler(regs);
                             regs.ax = 0xa0a0;
                             regs.dx = 0xd0d0;
                             regs.bx = 0xb0b0;
                             return 0;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    return_values_run(in, out);
    EXPECT_EQ(out[6], 0xa0a0u);
    EXPECT_EQ(out[7], 0xd0d0u);
    EXPECT_EQ(out[0], 0xb0b0u);
}

TEST_P(KretprobeRegisters, ADirectlyCalledFunctionsReturnKeepsEveryYmmRegister) {
    alignas(32) std::uint8_t in[32 * 16], out[32 * 16] = {};
    for (std::size_t i = 0; i < sizeof in; ++i) in[i] = static_cast<std::uint8_t>(i * 7 + 3);
    std::atomic<int> returns{0};
    ukp::Kretprobe probe{.kp = {.addr = function_address(ipa_callee), .flags = GetParam()},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             ++returns;
                             return clobbering_return_handler(regs);
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    EXPECT_EQ(is_optimized(function_address(ipa_callee)), GetParam() == 0) << ukp::format_probe_list();
    ipa_caller_run(in, out);
    EXPECT_EQ(returns, 1);
    EXPECT_EQ(std::memcmp(in, out, sizeof in), 0);
}


// A hit that another probe's pre-handler redirects (here to the function's
// own `ret`, as a fault injector makes a function return at once) is not
// entered by its landing's call: the landing must then go on to the
// trampoline that fits this function, whatever its previous user left
// there.  First a narrow return (return_values_function, called through a
// pointer) uses the thread's first landing; then ipa_callee, whose direct
// caller keeps values in every vector register, uses it again.
TEST_P(KretprobeRegisters, ARedirectedEntrysLandingLeadsToTheTrampolineItNeeds) {
    {
        alignas(32) std::uint64_t in[16] = {}, out[16] = {};
        ukp::Kretprobe narrow{.kp = {.addr = function_address(return_values_function), .flags = GetParam()},
                              .handler = [](ukp::KretprobeInstance&, ukp::Regs&) { return 0; }};
        ASSERT_TRUE(ukp::register_kretprobe(narrow));
        return_values_run(in, out);
    }
    alignas(32) std::uint8_t in[32 * 16], out[32 * 16] = {};
    for (std::size_t i = 0; i < sizeof in; ++i) in[i] = static_cast<std::uint8_t>(i * 5 + 1);
    std::atomic<int> returns{0};
    ukp::Kretprobe probe{.kp = {.addr = function_address(ipa_callee), .flags = GetParam()},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             ++returns;
                             return clobbering_return_handler(regs);
                         }};
    // Inside the region the optimized jump replaced: the stub's copy of the ret.
    const auto ret_address = reinterpret_cast<std::uint64_t>(ipa_callee_return);
    ukp::Kprobe redirect{.addr = function_address(ipa_callee),
                         .pre_handler =
                             [ret_address](ukp::Kprobe&, ukp::Regs& regs) {
                                 regs.ip = ret_address;
                                 return 1;
                             },
                         .flags = GetParam()};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    ASSERT_TRUE(ukp::register_kprobe(redirect));
    EXPECT_EQ(is_optimized(function_address(ipa_callee)), GetParam() == 0) << ukp::format_probe_list();
    ipa_caller_run(in, out);
    EXPECT_EQ(returns, 1);
    EXPECT_EQ(std::memcmp(in, out, sizeof in), 0);
}
// A function returning AVX-512 values, called through a register: the
// narrow trampoline keeps zmm0-1 whole when their upper halves are in use.
TEST(KretprobeVectors, ANarrowReturnKeepsZmmReturnValues) {
    if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "needs AVX-512F (the target returns zmm values)";
    alignas(64) std::uint8_t in[128], out[128] = {};
    for (std::size_t i = 0; i < sizeof in; ++i) in[i] = static_cast<std::uint8_t>(i * 13 + 5);
    std::atomic<int> returns{0};
    ukp::Kretprobe probe{.kp = {.addr = function_address(zmm_return_function)},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs&) {
                             ++returns;
                             clobber_zmm01();
                             return 0;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    ASSERT_TRUE(is_optimized(function_address(zmm_return_function))) << ukp::format_probe_list();
    zmm_return_run(in, out);
    EXPECT_EQ(returns, 1);
    EXPECT_EQ(std::memcmp(in, out, sizeof in), 0);
}

// The narrow trampoline restores the return values without asking XINUSE,
// at the width the CPU has; a return whose upper vector state was clean
// leaves it clean even after a handler that left it in use, so the
// program's SSE code after the return pays no AVX-SSE transition for us.
TEST(KretprobeVectors, ANarrowReturnLeavesACleanUpperVectorStateClean) {
    if (!__builtin_cpu_supports("avx")) GTEST_SKIP() << "needs AVX (the handler dirties the ymm upper halves)";
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(0xd, 1, &eax, &ebx, &ecx, &edx) || (eax & (1u << 2)) == 0)
        GTEST_SKIP() << "needs xgetbv with ECX=1 (XINUSE) to look at the upper state";
    std::atomic<int> returns{0};
    ukp::Kretprobe probe{.kp = {.addr = function_address(plain_return_function)},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs&) {
                             ++returns;
                             dirty_ymm_uppers();
                             return 0;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    ASSERT_TRUE(is_optimized(function_address(plain_return_function))) << ukp::format_probe_list();
    const unsigned xinuse = call_and_read_xinuse(plain_return_function, 41);
    EXPECT_EQ(returns, 1);
    EXPECT_EQ(xinuse & 0x4, 0u) << "the ymm upper halves are left in use";
    EXPECT_EQ(xinuse & 0x40, 0u) << "the zmm upper halves are left in use";
}

// A tail call from one return-probed function to another: both instances
// share the caller's slot; the inner one returns first (kernel order), both
// handlers see the real return address, and the caller gets the value.
class KretprobeTailCall : public testing::TestWithParam<unsigned> {};

TEST_P(KretprobeTailCall, BetweenTwoReturnProbedFunctions) {
    std::vector<std::pair<char, std::uint64_t>> seen;
    auto handler_for = [&seen](char which) {
        return [&seen, which](ukp::KretprobeInstance& instance, ukp::Regs& regs) {
            seen.emplace_back(which, regs.ip);
            EXPECT_EQ(regs.ip, instance.return_address);
            return 0;
        };
    };
    ukp::Kretprobe outer{.kp = {.addr = function_address(tail_outer), .flags = GetParam()}, .handler = handler_for('o')};
    ukp::Kretprobe inner{.kp = {.addr = function_address(tail_inner), .flags = GetParam()}, .handler = handler_for('i')};
    ASSERT_TRUE(ukp::register_kretprobe(outer));
    ASSERT_TRUE(ukp::register_kretprobe(inner));
    EXPECT_EQ(is_optimized(function_address(tail_outer)), GetParam() == 0) << ukp::format_probe_list();
    for (int round = 0; round < 3; ++round) {
        seen.clear();
        EXPECT_EQ(tail_run(40), 42);
        ASSERT_EQ(seen.size(), 2u);
        EXPECT_EQ(seen[0].first, 'i');
        EXPECT_EQ(seen[1].first, 'o');
        EXPECT_EQ(seen[0].second, seen[1].second);
    }
    EXPECT_EQ(tail_inner(1), 2);  // called on its own: its own return
    EXPECT_EQ(seen.size(), 3u);
    EXPECT_EQ(outer.npending() + inner.npending(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Kretprobe, KretprobeTailCall, testing::Values(0u, ukp::flag_no_optimize),
                         [](const auto& info) { return info.param ? "Int3" : "Optimized"; });

INSTANTIATE_TEST_SUITE_P(Kretprobe, KretprobeRegisters, testing::Values(0u, ukp::flag_no_optimize),
                         [](const auto& info) { return info.param ? "Int3" : "Optimized"; });

// xmm0 and st0 carry the return value through the trampoline while the
// handler does floating-point work of its own.
TEST(Kretprobe, FloatingPointReturnValuesSurvive) {
    std::atomic<int> returns{0};
    auto handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
        volatile double d = static_cast<double>(regs.ax) * 1.25;
        volatile long double l = static_cast<long double>(d) / 7;
        returns += l > -1 ? 1 : 0;
        return 0;
    };
    ukp::Kretprobe scale{.kp = {.addr = address_of(kret_scale)}, .handler = handler};
    ukp::Kretprobe scale_long{.kp = {.addr = address_of(kret_scale_long)}, .handler = handler};
    ASSERT_TRUE(ukp::register_kretprobe(scale));
    ASSERT_TRUE(ukp::register_kretprobe(scale_long));
    EXPECT_EQ(kret_scale(4.0), 10.0);
    EXPECT_EQ(kret_scale_long(5.0L), 15.0L);
    EXPECT_EQ(returns, 2);
}

TEST(Kretprobe, EntryDataReachesTheReturnHandlerOfTheSameCall) {
    std::atomic<int> mismatches{0}, returns{0};
    ukp::Kretprobe probe{.kp = {.addr = address_of(kret_recurse)},
                         .handler = [&](ukp::KretprobeInstance& instance, ukp::Regs& regs) {
                             // kret_recurse(n) returns n: the data saved at entry was n.
                             if (*static_cast<long*>(instance.data) != static_cast<long>(regs.ax)) ++mismatches;
                             ++returns;
                             return 0;
                         },
                         .entry_handler = [](ukp::KretprobeInstance& instance, ukp::Regs& regs) {
                             *static_cast<long*>(instance.data) = static_cast<long>(regs.di);
                             return 0;
                         },
                         .data_size = sizeof(long)};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    EXPECT_EQ(kret_recurse(20), 20);
    EXPECT_EQ(returns, 21);
    EXPECT_EQ(mismatches, 0);
}

// As in the kernel, one instance object serves both handlers of a call.
TEST(Kretprobe, EntryAndReturnHandlersSeeTheSameInstance) {
    std::atomic<int> same{0}, returns{0};
    ukp::Kretprobe probe{.kp = {.addr = address_of(kret_recurse)},
                         .handler =
                             [&](ukp::KretprobeInstance& instance, ukp::Regs&) {
                                 if (*static_cast<ukp::KretprobeInstance**>(instance.data) == &instance &&
                                     instance.rp == &probe)
                                     ++same;
                                 ++returns;
                                 return 0;
                             },
                         .entry_handler =
                             [](ukp::KretprobeInstance& instance, ukp::Regs&) {
                                 *static_cast<ukp::KretprobeInstance**>(instance.data) = &instance;
                                 return 0;
                             },
                         .data_size = sizeof(void*)};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    EXPECT_EQ(kret_recurse(5), 5);
    EXPECT_EQ(returns, 6);
    EXPECT_EQ(same, 6);
}

TEST(Kretprobe, EntryHandlerReturningNonZeroSkipsTheReturn) {
    std::atomic<int> returns{0};
    ukp::Kretprobe probe{.kp = {.addr = address_of(kret_add)},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs&) {
                             ++returns;
                             return 0;
                         },
                         .entry_handler = [](ukp::KretprobeInstance&, ukp::Regs& regs) { return regs.di % 2 ? 1 : 0; }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    for (long i = 1; i <= 4; ++i) EXPECT_EQ(kret_add(i, 1), i + 1);
    EXPECT_EQ(returns, 2);
    EXPECT_EQ(probe.nmissed(), 0u);
}

TEST(Kretprobe, MaxactiveBoundsLiveInstancesAndCountsMisses) {
    std::atomic<int> returns{0};
    auto probe = counting(address_of(kret_recurse), returns, 0, 5);
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    EXPECT_EQ(kret_recurse(19), 19);
    EXPECT_EQ(returns, 5);
    EXPECT_EQ(probe.nmissed(), 15u);
    EXPECT_EQ(kret_recurse(3), 3);
    EXPECT_EQ(returns, 9);
}

TEST(Kretprobe, DeepRecursionTenThousandLevels) {
    std::atomic<int> returns{0};
    auto probe = counting(address_of(kret_recurse), returns, 0, 10001);
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    EXPECT_EQ(kret_recurse(10000), 10000);
    EXPECT_EQ(returns, 10001);
    EXPECT_EQ(probe.nmissed(), 0u);
    EXPECT_EQ(probe.npending(), 0u);
}

TEST(Kretprobe, LongjmpOutOfAProbedFunction) {
    std::atomic<int> returns{0};
    auto probe = counting(address_of(kret_maybe_longjmp), returns);
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    volatile int jumped = 0;
    if (setjmp(kret_jump_target) == 0)
        kret_maybe_longjmp(1);
    else
        jumped = 1;
    EXPECT_EQ(jumped, 1);
    EXPECT_EQ(returns, 0);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(kret_maybe_longjmp(0), 100);
    EXPECT_EQ(returns, 3);
    EXPECT_EQ(probe.nabandoned(), 1u);
    EXPECT_EQ(probe.npending(), 0u);
}

TEST(Kretprobe, ExceptionPropagatesThroughProbedFunctions) {
    std::atomic<int> returns{0};
    auto inner = counting(address_of(kret_maybe_throw), returns);
    auto outer = counting(address_of(kret_throw_through_cleanup), returns);
    ASSERT_TRUE(ukp::register_kretprobe(inner));
    ASSERT_TRUE(ukp::register_kretprobe(outer));
    cleanups = 0;
    std::string caught;
    try {
        kret_throw_through_cleanup(1);
    } catch (const std::runtime_error& error) {
        caught = error.what();
    }
    EXPECT_EQ(caught, "thrown through a return probe");
    EXPECT_EQ(cleanups, 1);
    EXPECT_EQ(returns, 0);
    EXPECT_EQ(inner.nabandoned() + outer.nabandoned(), 2u);
    EXPECT_EQ(kret_throw_through_cleanup(0), 201);
    EXPECT_EQ(returns, 2);
    EXPECT_EQ(cleanups, 2);
}

TEST(Kretprobe, PthreadExitInsideAProbedFunction) {
    std::atomic<int> returns{0};
    auto probe = counting(address_of(kret_maybe_exit), returns);
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    pthread_t thread;
    ASSERT_EQ(pthread_create(
                  &thread, nullptr,
                  [](void*) -> void* {
                      kret_maybe_exit(0);
                      kret_maybe_exit(7);
                      return nullptr;
                  },
                  nullptr),
              0);
    void* result = nullptr;
    ASSERT_EQ(pthread_join(thread, &result), 0);
    EXPECT_EQ(reinterpret_cast<long>(result), 7);
    EXPECT_EQ(returns, 1);
    EXPECT_EQ(probe.nabandoned(), 1u);
    kret_maybe_exit(0);
    EXPECT_EQ(returns, 2);
}

// Thread cancellation unwinds with glibc's own pointer to libgcc's forced
// unwinder, which no interposer sees: it has to pass the hijacked slot
// itself (the return landing's unwind information) to reach the callers'
// cleanups.  Without it the unwind stops at the slot, the thread still
// ends, and the destructors above the watched call never run.
struct CancelStage {
    int fd = -1;
    std::atomic<int> destructors{0};
    std::atomic<bool> reading{false};
};

[[gnu::noinline]] long read_under_a_destructor(CancelStage& stage) {
    Cleanup cleanup{stage.destructors};
    stage.reading = true;
    volatile long result = kret_blocking_read(stage.fd);
    return result + 1;
}

class KretprobeCancel : public testing::TestWithParam<unsigned> {};

TEST_P(KretprobeCancel, CancellationInsideAProbedFunctionRunsTheCallersCleanups) {
    std::atomic<int> returns{0};
    auto probe = counting(address_of(kret_blocking_read), returns, GetParam());
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    int pipe_fds[2];
    ASSERT_EQ(pipe(pipe_fds), 0);
    CancelStage stage;
    stage.fd = pipe_fds[0];
    pthread_t thread;
    ASSERT_EQ(pthread_create(
                  &thread, nullptr,
                  [](void* argument) -> void* {
                      auto& stage = *static_cast<CancelStage*>(argument);
                      pthread_cleanup_push([](void* counter) { ++*static_cast<std::atomic<int>*>(counter); },
                                           &stage.destructors);
                      read_under_a_destructor(stage);
                      pthread_cleanup_pop(0);
                      return nullptr;
                  },
                  &stage),
              0);
    while (!stage.reading) std::this_thread::yield();
    ASSERT_EQ(pthread_cancel(thread), 0);
    void* result = nullptr;
    ASSERT_EQ(pthread_join(thread, &result), 0);
    EXPECT_EQ(result, PTHREAD_CANCELED);
    EXPECT_EQ(stage.destructors, 2) << "the Cleanup above the watched call and the thread's cleanup handler";
    EXPECT_EQ(returns, 0);
    // The main thread still returns through the probe.
    ASSERT_EQ(write(pipe_fds[1], "x", 1), 1);
    EXPECT_EQ(kret_blocking_read(pipe_fds[0]), 1);
    EXPECT_EQ(returns, 1);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}

INSTANTIATE_TEST_SUITE_P(Kretprobe, KretprobeCancel, testing::Values(0u, ukp::flag_no_optimize),
                         [](const auto& info) { return info.param ? "Int3" : "Optimized"; });

TEST(Kretprobe, ManyThreadsExactCounts) {
    constexpr int threads = 4, calls = 20000;
    std::atomic<long> sum{0};
    std::atomic<int> returns{0};
    ukp::Kretprobe probe{.kp = {.addr = address_of(kret_add)},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             sum += static_cast<long>(regs.ax);
                             ++returns;
                             return 0;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    std::atomic<int> wrong{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
            for (int i = 0; i < calls; ++i)
                if (kret_add(t, i) != t + i) ++wrong;
        });
    for (auto& worker : workers) worker.join();
    EXPECT_EQ(wrong, 0);
    EXPECT_EQ(returns, threads * calls);
    long expected = 0;
    for (int t = 0; t < threads; ++t) expected += static_cast<long>(t) * calls + static_cast<long>(calls) * (calls - 1) / 2;
    EXPECT_EQ(sum, expected);
    EXPECT_EQ(probe.nmissed(), 0u);
}

std::mutex block_lock;
std::condition_variable block_changed;
bool block_entered = false, block_released = false;

extern "C" [[gnu::noinline]] long kret_block(long value) {
    std::unique_lock lock(block_lock);
    block_entered = true;
    block_changed.notify_all();
    block_changed.wait(lock, [] { return block_released; });
    volatile long x = value;
    return x * 3;
}

TEST(Kretprobe, UnregisterWhileACallIsPending) {
    block_entered = block_released = false;
    std::atomic<int> returns{0};
    auto probe = std::unique_ptr<ukp::Kretprobe>(new ukp::Kretprobe{
        .kp = {.addr = address_of(kret_block)}, .handler = [&returns](ukp::KretprobeInstance&, ukp::Regs&) {
            ++returns;
            return 0;
        }});
    ASSERT_TRUE(ukp::register_kretprobe(*probe));
    long result = 0;
    std::thread caller([&] { result = kret_block(14); });
    {
        std::unique_lock lock(block_lock);
        block_changed.wait(lock, [] { return block_entered; });
    }
    EXPECT_EQ(probe->npending(), 1u);
    ukp::unregister_kretprobe(*probe);
    probe.reset();  // the pending instance must not need the object
    {
        std::lock_guard lock(block_lock);
        block_released = true;
    }
    block_changed.notify_all();
    caller.join();
    EXPECT_EQ(result, 42);
    EXPECT_EQ(returns, 0);
}

TEST(Kretprobe, ForkWithAPendingInstance) {
    std::atomic<int> returns{0};
    auto probe = counting(address_of(kret_fork), returns);
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    long pid = kret_fork();
    if (pid == 0) {
        // The child returned through the trampoline with its inherited instance.
        _exit(returns == 1 ? 0 : 2);
    }
    ASSERT_GT(pid, 0);
    int status = 0;
    ASSERT_EQ(waitpid(static_cast<pid_t>(pid), &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_EQ(returns, 1);
    EXPECT_EQ(probe.npending(), 0u);
}

TEST(Kretprobe, RejectsAnOffsetIntoTheFunction) {
    ukp::Kretprobe probe{.kp = {.addr = address_of(kret_add), .offset = 4},
                         .handler = [](ukp::KretprobeInstance&, ukp::Regs&) { return 0; }};
    auto registered = ukp::register_kretprobe(probe);
    ASSERT_FALSE(registered);
    EXPECT_EQ(registered.error().code, ukp::Errc::InvalidArgument);
}

}  // namespace

namespace {

// A fault in a return handler is abandoned like any handler's fault: the
// function still returns its own value to its caller.
TEST(Kretprobe, FaultingReturnHandlerIsAbandonedAndTheReturnCompletes) {
    volatile int* unmapped = reinterpret_cast<volatile int*>(0x10);
    ukp::Kretprobe probe{.kp = {.addr = address_of(kret_add)},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             regs.ax = 7;  // discarded with the rest of the abandoned call
                             return *unmapped;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    scrub_stack_below();  // the undo must not pass on what an earlier return left
    ::testing::internal::CaptureStderr();
    int result = kret_add(20, 22);
    std::string reported = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(result, 42);
    EXPECT_NE(reported.find("faulted"), std::string::npos) << reported;
    EXPECT_EQ(kret_add(1, 2), 3);
}

// A fault in a return probe's entry handler abandons it like any handler's:
// its register changes are undone, the call runs and returns its own value
// without a return handler, and the next call is probed as usual.  On the
// optimized path the trampoline then finishes the entry's jump into the
// function itself.
TEST(Kretprobe, FaultingEntryHandlerIsAbandonedAndTheCallCompletes) {
    volatile int* unmapped = reinterpret_cast<volatile int*>(0x10);
    std::atomic<int> returns{0};
    ukp::Kretprobe probe{.kp = {.addr = address_of(kret_add)},
                         .handler =
                             [&](ukp::KretprobeInstance&, ukp::Regs&) {
                                 ++returns;
                                 return 0;
                             },
                         .entry_handler = [&](ukp::KretprobeInstance&, ukp::Regs& regs) {
                             if (regs.di != 20) return 0;
                             regs.di = 1000;  // discarded with the rest of the abandoned call
                             return *unmapped;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    ASSERT_EQ(ukp::list_probes().at(0).kind, "optimized") << ukp::format_probe_list();
    ::testing::internal::CaptureStderr();
    EXPECT_EQ(kret_add(20, 22), 42);
    std::string reported = ::testing::internal::GetCapturedStderr();
    EXPECT_NE(reported.find("faulted"), std::string::npos) << reported;
    EXPECT_EQ(returns, 0);
    EXPECT_EQ(probe.npending(), 1u) << "the abandoned call's instance stays until the thread's next watched call";
    EXPECT_EQ(kret_add(1, 2), 3);
    EXPECT_EQ(returns, 1);
    EXPECT_EQ(probe.npending(), 0u) << "dropping the abandoned instance gave back its count";
    EXPECT_EQ(probe.nabandoned(), 0u) << "a call whose entry handler faulted was never watched";
}

}  // namespace

#include <execinfo.h>

namespace {

void* walked[32];
int walked_depth = 0;

extern "C" __attribute__((noinline)) int kret_walks_the_stack(int x) {
    walked_depth = backtrace(walked, 32);
    asm volatile("");
    return x + 1;
}

extern "C" __attribute__((noinline)) int kret_walk_caller(int x) {
    int result = kret_walks_the_stack(x);
    asm volatile("");
    return result + 1;
}

// backtrace() inside a return-probed function shows its real caller, and
// the return is still watched afterwards.
TEST(Kretprobe, BacktraceInsideAProbedFunctionShowsTheRealCaller) {
    int returns = 0;
    ukp::Kretprobe probe{.kp = {.addr = reinterpret_cast<void*>(&kret_walks_the_stack)},
                         .handler = [&](ukp::KretprobeInstance&, ukp::Regs&) {
                             ++returns;
                             return 0;
                         }};
    ASSERT_TRUE(ukp::register_kretprobe(probe));
    EXPECT_EQ(kret_walk_caller(1), 3);
    EXPECT_EQ(returns, 1);
    ASSERT_GE(walked_depth, 3) << "the walk stopped early";
    // Somewhere below the probed function's own frame: a return address
    // into its real caller (the walk starts inside our interposer).
    auto caller = reinterpret_cast<std::uint64_t>(&kret_walk_caller);
    bool found = false;
    for (int i = 0; i < walked_depth; ++i) {
        auto frame = reinterpret_cast<std::uint64_t>(walked[i]);
        found = found || (frame > caller && frame < caller + 256);
    }
    EXPECT_TRUE(found) << "no frame in kret_walk_caller";
}

}  // namespace
