// Optimized probes: a jump to a trampoline instead of int3.  What a handler
// sees must be what it sees on the int3 path; what blocks optimization must
// be visible; registers, flags and vector state must survive.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <ucontext.h>

#include <atomic>
#include <cpuid.h>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "targets.hpp"
#include "ukprobes/ukprobes.hpp"

namespace {

ukp::Kprobe counting(void* address, std::atomic<int>& hits) {
    return ukp::Kprobe{.addr = address, .pre_handler = [&hits](ukp::Kprobe&, ukp::Regs&) {
                           ++hits;
                           return 0;
                       }};
}

ukp::ProbeInfo info_of(const void* address) {
    for (auto& probe : ukp::list_probes())
        if (probe.address == reinterpret_cast<std::uint64_t>(address)) return probe;
    ADD_FAILURE() << "no probe at " << address;
    return {};
}

TEST(Optimized, EntryProbeIsOptimizedAndSeesWhatInt3Sees) {
    ukp::Regs seen{};
    ukp::Kprobe probe{.addr = function_address(opt_plain), .pre_handler = [&](ukp::Kprobe&, ukp::Regs& regs) {
                          seen = regs;
                          return 0;
                      }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    EXPECT_EQ(info_of(function_address(opt_plain)).kind, "optimized") << ukp::format_probe_list();
    EXPECT_EQ(*static_cast<unsigned char*>(function_address(opt_plain)), 0xe9);  // jmp rel32
    EXPECT_EQ(opt_plain(10), 13);
    EXPECT_EQ(probe.nhit(), 1u);
    EXPECT_EQ(seen.di, 10u);
    EXPECT_EQ(seen.ip, reinterpret_cast<std::uint64_t>(function_address(opt_plain)));
    // sp as at the probe: the return address is on top.
    EXPECT_NE(*reinterpret_cast<const std::uint64_t*>(seen.sp), 0u);
    EXPECT_EQ(seen.cs, 0x33u);
    EXPECT_NE(ukp::format_probe_list().find("[OPTIMIZED]"), std::string::npos);
}

TEST(Optimized, MidFunctionProbeAndPostHandlerAfterFirstInstruction) {
    std::uint64_t post_ip = 0, post_ax = 0;
    ukp::Kprobe probe{.addr = opt_plain_second,
                      .pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; },
                      .post_handler = [&](ukp::Kprobe&, ukp::Regs& regs, unsigned long) {
                          post_ip = regs.ip;
                          post_ax = regs.ax;
                      }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    EXPECT_EQ(info_of(opt_plain_second).kind, "optimized") << ukp::format_probe_list();
    EXPECT_EQ(opt_plain(1), 4);
    EXPECT_EQ(post_ip, reinterpret_cast<std::uint64_t>(opt_plain_second) + 3);
    EXPECT_EQ(post_ax & 0xffffffff, 2u) << "add eax, 1 has run, add eax, 2 not yet";
}

TEST(Optimized, PreHandlerRedirectSkipsTheFunction) {
    ukp::Kprobe probe{.addr = function_address(opt_plain), .pre_handler = [](ukp::Kprobe&, ukp::Regs& regs) {
                          regs.ax = static_cast<unsigned long>(-12);
                          regs.ip = *reinterpret_cast<const unsigned long*>(regs.sp);
                          regs.sp += 8;
                          return 1;
                      }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(function_address(opt_plain)).kind, "optimized");
    EXPECT_EQ(opt_plain(5), -12);
    ukp::unregister_kprobe(probe);
    EXPECT_EQ(opt_plain(5), 8);
}

// A handler that skips the probed instruction sets ip to the next one,
// which the optimized jump has overwritten (opt_plain's first instruction is
// 2 bytes): the hit goes on in the stub's copy of that instruction, as the
// int3 path goes on in the original.
class OptimizedSkip : public testing::TestWithParam<unsigned> {};

TEST_P(OptimizedSkip, PreHandlerSkippingTheProbedInstructionGoesOnAfterIt) {
    ukp::Kprobe probe{.addr = function_address(opt_plain),
                      .pre_handler =
                          [](ukp::Kprobe&, ukp::Regs& regs) {
                              regs.ax = 100;  // instead of mov eax, edi
                              regs.ip = reinterpret_cast<unsigned long>(opt_plain_second);
                              return 1;
                          },
                      .flags = GetParam()};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(function_address(opt_plain)).kind, GetParam() == 0 ? "optimized" : "boosted")
        << ukp::format_probe_list();
    EXPECT_EQ(opt_plain(5), 103);
    EXPECT_EQ(opt_plain(6), 103);
    EXPECT_EQ(probe.nhit(), 2u);
    EXPECT_EQ(probe.nfault(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Optimized, OptimizedSkip, testing::Values(0u, ukp::flag_no_optimize),
                         [](const auto& info) { return info.param == 0 ? "Optimized" : "Int3"; });

// No instruction of the original code starts 1 byte into opt_plain: an
// optimized probe cannot go on there, and refuses the redirect as a whole.
TEST(Optimized, RedirectIntoTheMiddleOfAReplacedInstructionIsUndone) {
    ukp::Kprobe probe{.addr = function_address(opt_plain), .pre_handler = [](ukp::Kprobe&, ukp::Regs& regs) {
                          regs.di = 100;
                          regs.ip = reinterpret_cast<unsigned long>(function_address(opt_plain)) + 1;
                          return 1;
                      }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(function_address(opt_plain)).kind, "optimized");
    testing::internal::CaptureStderr();
    EXPECT_EQ(opt_plain(5), 8);
    std::string said = testing::internal::GetCapturedStderr();
    EXPECT_EQ(probe.nfault(), 1u);
    EXPECT_NE(said.find("inside an instruction"), std::string::npos) << said;
}

// The trampoline's frame sits a fixed allowance below the probed code's
// stack; a redirect that needs the stack lower than that cannot be carried
// out there.  It is refused as a whole: the function runs as if the handler
// had returned 0 and changed nothing, and nfault counts it.
TEST(Optimized, RedirectLoweringSpBeyondTheTrampolinesAllowanceIsUndone) {
    ukp::Kprobe probe{.addr = function_address(opt_plain), .pre_handler = [](ukp::Kprobe&, ukp::Regs& regs) {
                          regs.di = 100;
                          regs.sp -= 64 * 1024;
                          regs.ip = reinterpret_cast<unsigned long>(opt_plain_second);
                          return 1;
                      }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(function_address(opt_plain)).kind, "optimized");
    testing::internal::CaptureStderr();
    EXPECT_EQ(opt_plain(5), 8);
    scrub_stack_below();  // the second hit takes the common path: its undo is complete
    EXPECT_EQ(opt_plain(6), 9);
    std::string said = testing::internal::GetCapturedStderr();
    EXPECT_EQ(probe.nhit(), 2u);
    EXPECT_EQ(probe.nfault(), 2u);
    EXPECT_NE(said.find("lowered sp"), std::string::npos) << said;
    EXPECT_EQ(said.find("lowered sp"), said.rfind("lowered sp")) << "said once per probe: " << said;
}

TEST(Optimized, HandlerCallingAProbedFunctionCountsAMiss) {
    std::atomic<int> inner_hits{0};
    auto inner = counting(opt_plain_second, inner_hits);
    int inner_result = 0;
    ukp::Kprobe outer{.addr = function_address(opt_load), .pre_handler = [&](ukp::Kprobe&, ukp::Regs&) {
                          inner_result = opt_plain(1);
                          return 0;
                      }};
    ASSERT_TRUE(ukp::register_kprobe(inner));
    ASSERT_TRUE(ukp::register_kprobe(outer));
    int value = 7;
    EXPECT_EQ(opt_load(&value), 7);
    EXPECT_EQ(inner_result, 4);
    EXPECT_EQ(inner.nmissed(), 1u);
    EXPECT_EQ(inner_hits.load(), 0);
}

struct Refusal {
    const char* name;
    void* address;
    const char* reason;  // a phrase the listing must contain
};

class NotOptimized : public ::testing::TestWithParam<Refusal> {};

TEST_P(NotOptimized, StaysInt3WithTheReasonListed) {
    const auto& refusal = GetParam();
    std::atomic<int> hits{0};
    auto probe = counting(refusal.address, hits);
    ASSERT_TRUE(ukp::register_kprobe(probe));
    auto info = info_of(refusal.address);
    EXPECT_NE(info.kind, "optimized");
    EXPECT_NE(info.not_optimized.find(refusal.reason), std::string::npos) << info.not_optimized;
    EXPECT_NE(ukp::format_probe_list().find(refusal.reason), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(
    Reasons, NotOptimized,
    ::testing::Values(Refusal{"branch_into_region", function_address(opt_branch_into), "branch"},
                      Refusal{"call_in_region", function_address(opt_call_in_region), "call"},
                      Refusal{"indirect_jump", function_address(opt_indirect_jump), "indirect jump"},
                      Refusal{"too_short", function_address(opt_too_short), "fewer than 5 bytes"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Optimized, NoOptimizeFlagKeepsInt3) {
    std::atomic<int> hits{0};
    auto probe = counting(function_address(opt_plain), hits);
    probe.flags = ukp::flag_no_optimize;
    ASSERT_TRUE(ukp::register_kprobe(probe));
    auto info = info_of(function_address(opt_plain));
    EXPECT_EQ(info.kind, "boosted");
    EXPECT_NE(info.not_optimized.find("UKP_NO_OPTIMIZE"), std::string::npos) << info.not_optimized;
    EXPECT_EQ(opt_plain(1), 4);
    EXPECT_EQ(hits.load(), 1);
}

TEST(Optimized, ProcessWideSwitchTakesProbesBackToInt3AndForth) {
    std::atomic<int> hits{0};
    auto probe = counting(function_address(opt_plain), hits);
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(function_address(opt_plain)).kind, "optimized");
    ukp::set_optimization(false);
    EXPECT_EQ(info_of(function_address(opt_plain)).kind, "boosted");
    EXPECT_EQ(*static_cast<unsigned char*>(function_address(opt_plain)), 0xcc);
    EXPECT_EQ(opt_plain(1), 4);
    ukp::set_optimization(true);
    EXPECT_EQ(info_of(function_address(opt_plain)).kind, "optimized");
    EXPECT_EQ(opt_plain(1), 4);
    EXPECT_EQ(hits.load(), 2);
}

TEST(Optimized, ProbeInsideTheRegionUnoptimizesItUntilRemoved) {
    std::atomic<int> outer_hits{0}, inner_hits{0};
    auto outer = counting(function_address(opt_plain), outer_hits);
    ASSERT_TRUE(ukp::register_kprobe(outer));
    ASSERT_EQ(info_of(function_address(opt_plain)).kind, "optimized");
    auto inner = counting(opt_plain_second, inner_hits);  // inside the outer's region
    ASSERT_TRUE(ukp::register_kprobe(inner));
    auto info = info_of(function_address(opt_plain));
    EXPECT_NE(info.kind, "optimized");
    EXPECT_NE(info.not_optimized.find("inside the displaced region"), std::string::npos) << info.not_optimized;
    EXPECT_EQ(opt_plain(1), 4);
    EXPECT_EQ(outer_hits.load(), 1);
    EXPECT_EQ(inner_hits.load(), 1);
    ukp::unregister_kprobe(inner);
    EXPECT_EQ(info_of(function_address(opt_plain)).kind, "optimized");
    EXPECT_EQ(opt_plain(1), 4);
    EXPECT_EQ(outer_hits.load(), 2);
}

TEST(Optimized, UnregisterRestoresTheOriginalBytes) {
    auto* code = static_cast<unsigned char*>(function_address(opt_plain));
    std::vector<unsigned char> before(code, code + 16);
    std::atomic<int> hits{0};
    auto probe = counting(code, hits);
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(code).kind, "optimized");
    ukp::unregister_kprobe(probe);
    EXPECT_EQ(std::vector<unsigned char>(code, code + 16), before);
    EXPECT_EQ(ukp::reclaim_retired_probes(), 0u);
}

std::atomic<std::uint64_t> fault_pc{0};
void skip_faulting_load(int, siginfo_t*, void* context) {
    auto* uc = static_cast<ucontext_t*>(context);
    fault_pc = static_cast<std::uint64_t>(uc->uc_mcontext.gregs[REG_RIP]);
    uc->uc_mcontext.gregs[REG_RAX] = -1;
    uc->uc_mcontext.gregs[REG_RIP] += 5;  // mov eax, [rdi]; add eax, 0
}

TEST(Optimized, FaultInTheStubIsSeenAtTheOriginalAddress) {
    struct sigaction action {}, previous {};
    action.sa_sigaction = skip_faulting_load;
    action.sa_flags = SA_SIGINFO;
    ASSERT_EQ(sigaction(SIGSEGV, &action, &previous), 0);
    std::atomic<int> hits{0};
    auto probe = counting(function_address(opt_load), hits);
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(function_address(opt_load)).kind, "optimized");
    EXPECT_EQ(opt_load(reinterpret_cast<const int*>(0x10)), -1);
    EXPECT_EQ(fault_pc.load(), reinterpret_cast<std::uint64_t>(function_address(opt_load)));
    sigaction(SIGSEGV, &previous, nullptr);
}

bool cpu_has_avx2() {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    return (ebx & (1u << 5)) != 0;
}

// A handler that wrecks every vector register the ABI lets it clobber, the
// way glibc's AVX2 string functions would.
int clobber_vectors(ukp::Kprobe&, ukp::Regs&) {
    clobber_ymm_registers();
    return 0;
}

std::vector<unsigned char> pattern(std::size_t size) {
    std::vector<unsigned char> bytes(size);
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<unsigned char>(i * 7 + 3);
    return bytes;
}

TEST(Optimized, MidFunctionProbePreservesYmmRegistersAgainstAClobberingHandler) {
    if (!cpu_has_avx2()) GTEST_SKIP() << "the CPU has no AVX2";
    auto in = pattern(16 * 32);
    std::vector<unsigned char> out(16 * 32);
    ukp::Kprobe probe{.addr = vector_clobber_site, .pre_handler = clobber_vectors};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(vector_clobber_site).kind, "optimized") << ukp::format_probe_list();
    vector_clobber_run(in.data(), out.data());
    EXPECT_EQ(probe.nhit(), 1u);
    EXPECT_EQ(out, in);
}

TEST(Optimized, EntryProbePreservesArgumentYmmRegisters) {
    if (!cpu_has_avx2()) GTEST_SKIP() << "the CPU has no AVX2";
    auto in = pattern(8 * 32);
    std::vector<unsigned char> out(8 * 32);
    ukp::Kprobe probe{.addr = function_address(vector_entry_function), .pre_handler = clobber_vectors};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(function_address(vector_entry_function)).kind, "optimized") << ukp::format_probe_list();
    vector_entry_run(in.data(), out.data());
    EXPECT_EQ(probe.nhit(), 1u);
    EXPECT_EQ(out, in);
}

// A function that code of its own module calls directly may have callers
// that keep values in caller-saved registers across the call (-fipa-ra):
// its entry probe preserves every vector register, not just the arguments.
TEST(Optimized, EntryProbeOfADirectlyCalledFunctionPreservesEveryYmmRegister) {
    if (!cpu_has_avx2()) GTEST_SKIP() << "the CPU has no AVX2";
    auto in = pattern(16 * 32);
    std::vector<unsigned char> out(16 * 32);
    ukp::Kprobe probe{.addr = function_address(ipa_callee), .pre_handler = clobber_vectors};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    ASSERT_EQ(info_of(function_address(ipa_callee)).kind, "optimized") << ukp::format_probe_list();
    ipa_caller_run(in.data(), out.data());
    EXPECT_EQ(probe.nhit(), 1u);
    EXPECT_EQ(out, in);
}

// Real code: probes on every function of Debian's libz, driven through a
// compress/uncompress round trip.  The output must be what it is without
// probes, and the optimized probes must count exactly what int3 probes count.
using CompressFn = int (*)(unsigned char*, unsigned long*, const unsigned char*, unsigned long, int);
using UncompressFn = int (*)(unsigned char*, unsigned long*, const unsigned char*, unsigned long);

struct RoundTrip {
    std::vector<unsigned char> compressed, restored;
};

RoundTrip round_trip(CompressFn compress, UncompressFn uncompress) {
    std::string text;
    for (int i = 0; i < 2000; ++i) text += "ukprobes probes every function of libz, line " + std::to_string(i % 37) + "\n";
    RoundTrip result;
    unsigned long compressed_size = text.size() + 1024;
    result.compressed.resize(compressed_size);
    compress(result.compressed.data(), &compressed_size, reinterpret_cast<const unsigned char*>(text.data()),
             text.size(), 6);
    result.compressed.resize(compressed_size);
    unsigned long restored_size = text.size();
    result.restored.resize(restored_size);
    uncompress(result.restored.data(), &restored_size, result.compressed.data(), compressed_size);
    result.restored.resize(restored_size);
    return result;
}

struct LibraryProbes {
    std::vector<std::unique_ptr<ukp::Kprobe>> probes;
    std::vector<std::uint64_t> hits;  // per probe, after the run
    int refused = 0, optimized = 0;
};

LibraryProbes probe_library(const std::vector<ukp::FunctionSymbol>& functions, unsigned flags) {
    LibraryProbes result;
    for (const auto& function : functions) {
        auto probe = std::make_unique<ukp::Kprobe>();
        probe->addr = reinterpret_cast<void*>(function.address);
        probe->pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; };
        probe->flags = flags;
        if (ukp::register_kprobe(*probe))
            result.probes.push_back(std::move(probe));
        else
            ++result.refused;
    }
    for (const auto& info : ukp::list_probes()) result.optimized += info.kind == "optimized";
    return result;
}

TEST(Optimized, EveryFunctionOfLibzRoundTripsUnchangedWithExactCounts) {
    void* libz = dlopen("libz.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (libz == nullptr) libz = dlopen("libz.so.1", RTLD_NOW);
    if (libz == nullptr) GTEST_SKIP() << "libz.so.1 is not installed";
    auto compress = reinterpret_cast<CompressFn>(dlsym(libz, "compress2"));
    auto uncompress = reinterpret_cast<UncompressFn>(dlsym(libz, "uncompress"));
    ASSERT_TRUE(compress && uncompress);
    auto functions = ukp::find_functions("libz.so.1", "*");
    ASSERT_TRUE(functions) << functions.error().message;
    ASSERT_GT(functions->size(), 50u);
    // Aliases share an address: one probe per address.
    std::map<std::uint64_t, ukp::FunctionSymbol> unique;
    for (auto& function : *functions) unique.emplace(function.address, function);
    std::vector<ukp::FunctionSymbol> targets;
    for (auto& [address, function] : unique) targets.push_back(function);

    auto reference = round_trip(compress, uncompress);

    auto int3 = probe_library(targets, ukp::flag_no_optimize);
    auto with_int3 = round_trip(compress, uncompress);
    for (auto& probe : int3.probes) int3.hits.push_back(probe->nhit());
    std::vector<ukp::Kprobe*> pointers;
    for (auto& probe : int3.probes) pointers.push_back(probe.get());
    ukp::unregister_kprobes(pointers);

    auto jumps = probe_library(targets, 0);
    auto with_jumps = round_trip(compress, uncompress);
    for (auto& probe : jumps.probes) jumps.hits.push_back(probe->nhit());

    EXPECT_EQ(with_int3.compressed, reference.compressed);
    EXPECT_EQ(with_jumps.compressed, reference.compressed);
    EXPECT_EQ(with_jumps.restored, reference.restored);
    ASSERT_EQ(int3.probes.size(), jumps.probes.size());
    EXPECT_EQ(jumps.hits, int3.hits);
    std::uint64_t total = 0;
    for (auto hits : jumps.hits) total += hits;
    EXPECT_GE(total, 20u) << "the round trip runs through the probed functions";
    std::printf("libz: %zu functions, %zu probed, %d refused, %d optimized (%.0f%%), %llu hits\n", targets.size(),
                jumps.probes.size(), jumps.refused, jumps.optimized,
                100.0 * jumps.optimized / std::max<std::size_t>(1, jumps.probes.size()),
                static_cast<unsigned long long>(total));
    EXPECT_GT(jumps.optimized * 2, static_cast<int>(jumps.probes.size())) << "most of libz optimizes";
}

}  // namespace
