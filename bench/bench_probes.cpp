// ukp_bench: what a probe hit and a registration cost.
//
// Two floors frame every per-hit figure:
//   - the jump floor (BM_JumpFloor): a hand-written `jmp rel32` to a
//     trampoline that saves the general registers and the flags, calls an
//     empty C function and jumps back.  No jump-based probe can be cheaper;
//     the issue's targets are an optimized entry probe at most 1.5x this and a
//     mid-function probe at most 2x.
//   - the int3 floor (BM_RawInt3): one int3, the kernel's SIGTRAP delivery to
//     a handler that does nothing, and rt_sigreturn.  No int3-based probe can
//     be cheaper.
// Every hit benchmark reports `vs_floor` and `vs_int3`, its time divided by
// each floor measured in the same run, and the summary prints the issue's
// targets with what this run measured.  A kernel uprobe on the same code
// through tracefs (BM_KernelUprobe) is the baseline an optimized probe should
// beat by at least 100x; it is skipped, with the reason, when tracefs is not
// writable.
//
// Return probes (issue 4): BM_KretprobeEmpty is a Kretprobe with empty entry
// and return handlers, the optimized entry plus the return trampoline, on a
// copy of BM_OptimizedEntry's function; the targets are at most 2.5x
// BM_OptimizedEntry and at least 100x cheaper than the kernel's uprobe +
// uretprobe pair on another copy (BM_KernelUprobeUretprobe, `p:` and `r:`
// events both enabled, skipped like BM_KernelUprobe).  BM_TypedEntryProbe
// (ukp::EntryProbe<int(int)>, empty handler) and BM_LatencyProbe
// (ukp::LatencyProbe: two clock reads and the histogram's atomics on top of
// a Kretprobe) are reported beside them, without targets.
//
// Measuring the int3 floor needs a SIGTRAP handler of our own, and once a
// probe is registered ukprobes owns SIGTRAP: it interposes sigaction(), and a
// program int3 reaches the program's handler only through ukprobes' trap
// handler, which adds exactly the cost we want to leave out.  So:
//
//   1. main() forks a child before anything registers a probe.  The child
//      installs its SIGTRAP handler with plain sigaction(), which ukprobes
//      passes straight to libc while it does not own the signal, and waits.
//   2. BM_RawInt3 sends the child a batch size over a pipe; the child runs
//      that many int3 round trips in a tight loop, times them with
//      CLOCK_MONOTONIC and writes the elapsed nanoseconds back.
//   3. BM_RawInt3 reports that time as manual time, so Google Benchmark's
//      iteration control and statistics apply; the pipe round trip between
//      batches is not counted.
// SummaryReporter holds every result until the end (with random
// interleaving a floor may be reported after what it divides) and then
// prints the console table and the summary.  Any single figure here moves by
// 10-20% with load on a small VM; the defaults in main() (repetitions,
// interleaving, the minimum over repetitions) damp that.
//
// The probed functions are written in assembly so that the probed
// instructions, and with them the way ukprobes handles them, are known
// exactly.  Every probe benchmark checks the kind ukprobes reports for its
// probe and fails (SkipWithError, naming the kind it got) when it is not the
// kind the benchmark measures, so a change in that decision is visible
// instead of silently measuring something else.  The int3 benchmarks keep
// their probes on the int3 path with ukp::flag_no_optimize.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <expected>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "ukprobes/entry_probe.hpp"
#include "ukprobes/latency.hpp"
#include "tracer/agent/hit.hpp"
#include "tracer/definition.hpp"
#include "tracer/session.hpp"
#include "ukprobes/ukprobes.hpp"

extern "C" {
int ukp_bench_bare(int value);
int ukp_bench_raw_int3(int value);
int ukp_bench_floor_target(int value);
int ukp_bench_opt_entry(int value);
int ukp_bench_opt_mid(int value);
int ukp_bench_opt_prepost(int value);
int ukp_bench_uprobe_target(int value);
int ukp_bench_kret_target(int value);
int ukp_bench_typed_entry(int value);
int ukp_bench_latency_target(int value);
int ukp_bench_uretprobe_target(int value);
int ukp_bench_boostable(int value);
int ukp_bench_emulated(int value);
int ukp_bench_post(int value);
int ukp_bench_register_target(int value);
int ukp_bench_traced(int value);
int ukp_bench_kernel_event_target(int value);
extern const char ukp_bench_tiny_functions[];
extern const char ukp_bench_bulk_functions[];

// What the hand-written floor trampoline calls: nothing, but a real call.
__attribute__((noinline, used)) void ukp_bench_empty_c_function() { asm volatile(""); }
}

// Every function returns its argument plus one.  Bytes with their
// disassembly; the first instruction is the one probed unless said otherwise.
asm(R"(
    .text
    .macro ukp_bench_function name
    .p2align 4, 0xcc
    .globl \name
    .type \name, @function
\name:
    .endm

    ukp_bench_function ukp_bench_bare
    mov %edi, %eax              # 89 f8
    add $1, %eax                # 83 c0 01
    ret                         # c3
    .size ukp_bench_bare, .-ukp_bench_bare

    ukp_bench_function ukp_bench_raw_int3
    int3                        # cc: SIGTRAP, resumes after it
    mov %edi, %eax              # 89 f8
    add $1, %eax                # 83 c0 01
    ret                         # c3
    .size ukp_bench_raw_int3, .-ukp_bench_raw_int3

    # ---- The jump floor ----
    # What an optimized entry probe on ukp_bench_opt_entry does, written by
    # hand with nothing a probe engine needs beyond the minimum: the 5-byte
    # jump replaces `mov %edi,%eax; lea 1(%rax),%eax`, the trampoline steps
    # over the red zone, saves the flags and the 15 general registers, aligns
    # the stack, calls an empty C function (with DF clear, as the ABI wants),
    # restores, runs the displaced instructions and jumps back to the `ret`.
    ukp_bench_function ukp_bench_floor_target
    .byte 0xe9                  # e9 rel32: jmp ukp_bench_floor_trampoline
    .long ukp_bench_floor_trampoline - (. + 4)
.Lukp_bench_floor_resume:
    ret                         # c3
    .size ukp_bench_floor_target, .-ukp_bench_floor_target

    .p2align 4, 0xcc
    .type ukp_bench_floor_trampoline, @function
ukp_bench_floor_trampoline:
    lea -128(%rsp), %rsp        # step over the red zone
    pushfq
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rbp
    and $-16, %rsp
    cld
    call ukp_bench_empty_c_function
    mov %rbp, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    popfq
    lea 128(%rsp), %rsp
    mov %edi, %eax              # the displaced instructions
    lea 1(%rax), %eax
    jmp .Lukp_bench_floor_resume
    .size ukp_bench_floor_trampoline, .-ukp_bench_floor_trampoline

    # ---- Optimized probes ----
    # Entry: the 5 bytes before the ret are the displaced region.
    ukp_bench_function ukp_bench_opt_entry
    mov %edi, %eax              # 89 f8: probed
    lea 1(%rax), %eax           # 8d 40 01
    ret                         # c3
    .size ukp_bench_opt_entry, .-ukp_bench_opt_entry

    # ---- ukprobe's hit path (BM_TracedHit) and the kernel's uprobe event with the same fetch args ----
    ukp_bench_function ukp_bench_traced
    mov %edi, %eax              # 89 f8: probed
    lea 1(%rax), %eax           # 8d 40 01
    ret                         # c3
    .size ukp_bench_traced, .-ukp_bench_traced

    ukp_bench_function ukp_bench_kernel_event_target
    mov %edi, %eax              # 89 f8: probed
    lea 1(%rax), %eax           # 8d 40 01
    ret                         # c3
    .size ukp_bench_kernel_event_target, .-ukp_bench_kernel_event_target

    # Mid-function: the probe is at +4; nothing branches anywhere.
    ukp_bench_function ukp_bench_opt_mid
    push %rbp                   # 55
    mov %rsp, %rbp              # 48 89 e5
    mov %edi, %eax              # 89 f8: probed (+4)
    lea 1(%rax), %eax           # 8d 40 01
    pop %rbp                    # 5d
    ret                         # c3
    .size ukp_bench_opt_mid, .-ukp_bench_opt_mid

    # Entry with a pre- and a post-handler.
    ukp_bench_function ukp_bench_opt_prepost
    mov %edi, %eax              # 89 f8: probed
    lea 1(%rax), %eax           # 8d 40 01
    ret                         # c3
    .size ukp_bench_opt_prepost, .-ukp_bench_opt_prepost

    # The kernel uprobe's target: ukp_bench_opt_entry's code, in a function
    # of its own so that no ukprobes probe shares it.
    ukp_bench_function ukp_bench_uprobe_target
    mov %edi, %eax              # 89 f8: probed by the kernel
    lea 1(%rax), %eax           # 8d 40 01
    ret                         # c3
    .size ukp_bench_uprobe_target, .-ukp_bench_uprobe_target

    # ---- Return probes and typed entry probes ----
    # ukp_bench_opt_entry's code again, one copy per benchmark so that no two
    # probes share an address: the entry probe is optimized the same way, and
    # the return probe hijacks the `ret`'s return address.
    ukp_bench_function ukp_bench_kret_target
    mov %edi, %eax              # 89 f8: probed (Kretprobe, empty handlers)
    lea 1(%rax), %eax           # 8d 40 01
    ret                         # c3
    .size ukp_bench_kret_target, .-ukp_bench_kret_target

    ukp_bench_function ukp_bench_typed_entry
    mov %edi, %eax              # 89 f8: probed (EntryProbe<int(int)>)
    lea 1(%rax), %eax           # 8d 40 01
    ret                         # c3
    .size ukp_bench_typed_entry, .-ukp_bench_typed_entry

    ukp_bench_function ukp_bench_latency_target
    mov %edi, %eax              # 89 f8: probed (LatencyProbe)
    lea 1(%rax), %eax           # 8d 40 01
    ret                         # c3
    .size ukp_bench_latency_target, .-ukp_bench_latency_target

    # The kernel uprobe + uretprobe pair's target, apart from every other.
    ukp_bench_function ukp_bench_uretprobe_target
    mov %edi, %eax              # 89 f8: probed by the kernel (p: and r:)
    lea 1(%rax), %eax           # 8d 40 01
    ret                         # c3
    .size ukp_bench_uretprobe_target, .-ukp_bench_uretprobe_target

    # ---- int3 probes (registered with ukp::flag_no_optimize) ----
    ukp_bench_function ukp_bench_boostable
    mov %edi, %eax              # 89 f8: boostable
    add $1, %eax                # 83 c0 01
    ret                         # c3
    .size ukp_bench_boostable, .-ukp_bench_boostable

    ukp_bench_function ukp_bench_emulated
    push %rbp                   # 55: emulated
    mov %rsp, %rbp              # 48 89 e5
    mov %edi, %eax              # 89 f8
    add $1, %eax                # 83 c0 01
    pop %rbp                    # 5d
    ret                         # c3
    .size ukp_bench_emulated, .-ukp_bench_emulated

    ukp_bench_function ukp_bench_post
    mov %edi, %eax              # 89 f8: boostable; the post-handler adds a trap
    add $1, %eax                # 83 c0 01
    ret                         # c3
    .size ukp_bench_post, .-ukp_bench_post

    ukp_bench_function ukp_bench_register_target
    mov %edi, %eax              # 89 f8
    add $1, %eax                # 83 c0 01
    ret                         # c3
    .size ukp_bench_register_target, .-ukp_bench_register_target

    .purgem ukp_bench_function

    # 1000 tiny functions, one every 16 bytes from ukp_bench_tiny_functions:
    # 3 bytes each, too short for a jump, so their probes stay int3.
    # (\@ numbers the expansions, so each function has its own symbol.)
    .macro ukp_bench_tiny_function
    .p2align 4, 0xcc
    .type ukp_bench_tiny_\@, @function
ukp_bench_tiny_\@:
    mov %edi, %eax              # 89 f8
    ret                         # c3
    .size ukp_bench_tiny_\@, .-ukp_bench_tiny_\@
    .endm
    .p2align 4, 0xcc
    .globl ukp_bench_tiny_functions
ukp_bench_tiny_functions:
    .rept 1000
    ukp_bench_tiny_function
    .endr
    .purgem ukp_bench_tiny_function

    # 10,000 optimizable functions, one every 16 bytes from
    # ukp_bench_bulk_functions: 5 bytes of displaced region before the ret.
    .macro ukp_bench_bulk_function
    .p2align 4, 0xcc
    .type ukp_bench_bulk_\@, @function
ukp_bench_bulk_\@:
    mov %edi, %eax              # 89 f8
    add $1, %eax                # 83 c0 01
    ret                         # c3
    .size ukp_bench_bulk_\@, .-ukp_bench_bulk_\@
    .endm
    .p2align 4, 0xcc
    .globl ukp_bench_bulk_functions
ukp_bench_bulk_functions:
    .rept 10000
    ukp_bench_bulk_function
    .endr
    .purgem ukp_bench_bulk_function
    .p2align 4, 0xcc
)");

namespace {

constexpr int function_stride = 16;  // .p2align 4
constexpr int tiny_function_count = 1000;
constexpr int bulk_function_count = 10000;
constexpr std::uint64_t mid_probe_offset = 4;
constexpr benchmark::IterationCount int3_batch = 1000;

std::uint64_t now_ns() {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(now.tv_nsec);
}

// ---- The int3 floor, measured in a child that ukprobes never touched ----

void ignore_sigtrap(int, siginfo_t*, void*) {}

[[noreturn]] void serve_int3_batches(int request_fd, int reply_fd) {
    struct sigaction action {};
    action.sa_sigaction = ignore_sigtrap;
    // SA_NODEFER: the kernel then leaves the signal mask alone on delivery
    // and on sigreturn, the least work a SIGTRAP round trip can cost (and
    // what ukprobes' own handler asks for).
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGTRAP, &action, nullptr) != 0) _exit(2);
    std::uint64_t batch = 0;
    while (read(request_fd, &batch, sizeof batch) == sizeof batch) {
        std::uint64_t start = now_ns();
        for (std::uint64_t i = 0; i < batch; ++i) benchmark::DoNotOptimize(ukp_bench_raw_int3(static_cast<int>(i)));
        std::uint64_t elapsed = now_ns() - start;
        if (write(reply_fd, &elapsed, sizeof elapsed) != sizeof elapsed) _exit(3);
    }
    _exit(0);  // the parent closed the pipe
}

class Int3FloorServer {
public:
    [[nodiscard]] static std::expected<std::unique_ptr<Int3FloorServer>, std::string> start() {
        int request[2], reply[2];
        if (pipe2(request, O_CLOEXEC) != 0 || pipe2(reply, O_CLOEXEC) != 0) return std::unexpected("pipe2 failed");
        pid_t child = fork();
        if (child < 0) return std::unexpected("fork failed");
        if (child == 0) {
            close(request[1]);
            close(reply[0]);
            serve_int3_batches(request[0], reply[1]);
        }
        close(request[0]);
        close(reply[1]);
        return std::unique_ptr<Int3FloorServer>(new Int3FloorServer(child, request[1], reply[0]));
    }
    Int3FloorServer(const Int3FloorServer&) = delete;
    Int3FloorServer& operator=(const Int3FloorServer&) = delete;
    ~Int3FloorServer() {
        close(request_fd);  // EOF ends the child's loop
        close(reply_fd);
        waitpid(child, nullptr, 0);
    }

    // Nanoseconds the child took for `batch` int3 round trips.
    [[nodiscard]] std::expected<std::uint64_t, std::string> run(std::uint64_t batch) const {
        std::uint64_t elapsed = 0;
        if (write(request_fd, &batch, sizeof batch) != sizeof batch ||
            read(reply_fd, &elapsed, sizeof elapsed) != sizeof elapsed)
            return std::unexpected("the int3 child stopped answering");
        return elapsed;
    }

private:
    Int3FloorServer(pid_t child_pid, int request, int reply) : child(child_pid), request_fd(request), reply_fd(reply) {}
    pid_t child;
    int request_fd, reply_fd;
};

Int3FloorServer* int3_floor = nullptr;

// ---- Benchmarks: calls without a probe ----

void BM_BareCall(benchmark::State& state) {
    int value = 0;
    for (auto _ : state) benchmark::DoNotOptimize(value = ukp_bench_bare(value));
}

void BM_JumpFloor(benchmark::State& state) {
    int value = 0;
    for (auto _ : state) benchmark::DoNotOptimize(value = ukp_bench_floor_target(value));
    if (value != static_cast<int>(state.iterations())) state.SkipWithError("the floor trampoline computed nonsense");
    state.SetLabel("hand-written jmp");
}

void BM_RawInt3(benchmark::State& state) {
    if (int3_floor == nullptr) return state.SkipWithError("no int3 child process");
    while (state.KeepRunningBatch(int3_batch)) {
        auto elapsed = int3_floor->run(int3_batch);
        if (!elapsed) return state.SkipWithError(elapsed.error().c_str());
        state.SetIterationTime(static_cast<double>(*elapsed) * 1e-9);
    }
    state.SetLabel("int3 floor");
}

// ---- Benchmarks: ukprobes probe hits ----

struct KindInfo {
    std::string kind, not_optimized;
};

KindInfo kind_of(const void* address) {
    for (const auto& probe : ukp::list_probes())
        if (probe.address == reinterpret_cast<std::uint64_t>(address)) return {probe.kind, probe.not_optimized};
    return {"not listed", ""};
}

// The components of the extended state the program has in use (xgetbv with
// ecx=1): what decides how much vector state a trampoline saves.
std::uint64_t xinuse() {
    std::uint32_t low = 0, high = 0;
    asm volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(1));
    return (static_cast<std::uint64_t>(high) << 32) | low;
}

// The components beyond xmm that a trampoline saves when they are in use,
// as they are at the start of a benchmark loop.  A label, so it must not
// change between repetitions: x87 and the rest are left out.
std::string vector_state_in_use() {
    const std::uint64_t in_use = xinuse();
    std::string names;
    for (auto [bit, name] : {std::pair{2, "ymm"}, {5, "k"}, {6, "zmm0-15"}, {7, "zmm16-31"}})
        if (in_use & (std::uint64_t{1} << bit)) names += (names.empty() ? "" : "+") + std::string(name);
    return "+xmm" + (names.empty() ? std::string() : "," + names);
}

// The benchmark's label when the probe at `address` has `expected_kind`
// (with the vector state in use for optimized ones), else why not.
std::expected<std::string, std::string> label_if_kind(const void* address, std::string_view expected_kind) {
    auto kind = kind_of(address);
    if (kind.kind != expected_kind) {
        // One retry: an optimization can wait for a thread to leave the region.
        (void)ukp::optimize_pending_probes();
        kind = kind_of(address);
    }
    if (kind.kind != expected_kind) {
        std::string message = "expected a " + std::string(expected_kind) + " probe, got " + kind.kind;
        if (!kind.not_optimized.empty()) message += " (not optimized: " + kind.not_optimized + ")";
        return std::unexpected(message);
    }
    return expected_kind == "optimized" ? kind.kind + " " + vector_state_in_use() : kind.kind;
}

// Unregisters on every way out of a benchmark.
struct Registered {
    ukp::Kprobe& probe;
    ~Registered() {
        if (probe.is_registered()) ukp::unregister_kprobe(probe);
    }
};

// The probed functions are called through a pointer the compiler cannot see
// through, as a program calls a library function through the PLT.  A direct
// call from the same module makes an entry probe save every vector register
// (a caller there may keep values in them: arch/backend.hpp,
// plan_optimization), which is not the case these rows measure.
template <class Function>
Function* called_from_elsewhere(Function* function) {
    asm volatile("" : "+r"(function));
    return function;
}

struct ProbedCall {
    int (*function)(int);
    std::uint64_t offset = 0;  // of the probe in `function`
    bool post_handler = false;
    unsigned flags = 0;
    std::string_view expected_kind;
};

// One probe on `call.function` with empty handlers; each iteration is one
// call, so one hit.
void run_probed_calls(benchmark::State& state, const ProbedCall& call) {
    ukp::Kprobe probe;
    probe.addr = reinterpret_cast<void*>(call.function);
    probe.offset = call.offset;
    probe.flags = call.flags;
    probe.pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; };
    if (call.post_handler) probe.post_handler = [](ukp::Kprobe&, ukp::Regs&, unsigned long) {};
    if (auto registered = ukp::register_kprobe(probe); !registered)
        return state.SkipWithError(registered.error().message.c_str());
    Registered guard{probe};
    auto label = label_if_kind(probe.address(), call.expected_kind);
    if (!label) return state.SkipWithError(label.error().c_str());
    state.SetLabel(*label);

    int value = 0;
    auto* function = called_from_elsewhere(call.function);
    for (auto _ : state) benchmark::DoNotOptimize(value = function(value));

    if (probe.nhit() != static_cast<std::uint64_t>(state.iterations()))
        state.SkipWithError("the probe missed calls: nhit() != iterations");
    else if (value != static_cast<int>(state.iterations()))
        state.SkipWithError("the probed function computed a wrong result");
}

void BM_OptimizedEntry(benchmark::State& state) {
    run_probed_calls(state, {.function = ukp_bench_opt_entry, .expected_kind = "optimized"});
}
void BM_OptimizedMid(benchmark::State& state) {
    run_probed_calls(state, {.function = ukp_bench_opt_mid, .offset = mid_probe_offset, .expected_kind = "optimized"});
}
void BM_OptimizedPrePost(benchmark::State& state) {
    run_probed_calls(state, {.function = ukp_bench_opt_prepost, .post_handler = true, .expected_kind = "optimized"});
}
void BM_BoostedProbe(benchmark::State& state) {
    run_probed_calls(state,
                     {.function = ukp_bench_boostable, .flags = ukp::flag_no_optimize, .expected_kind = "boosted"});
}
void BM_EmulatedProbe(benchmark::State& state) {
    run_probed_calls(state,
                     {.function = ukp_bench_emulated, .flags = ukp::flag_no_optimize, .expected_kind = "emulated"});
}
void BM_PostHandlerProbe(benchmark::State& state) {
    run_probed_calls(state, {.function = ukp_bench_post,
                             .post_handler = true,
                             .flags = ukp::flag_no_optimize,
                             .expected_kind = "boosted+post-trap"});
}

// ---- Return probes, typed entry probes, the latency helper ----
// Each on its own copy of ukp_bench_opt_entry, with empty handlers (the
// latency probe's are its own), one call per iteration.

// A Kretprobe with an empty entry handler and an empty return handler: the
// optimized entry plus the return trampoline.
void BM_KretprobeEmpty(benchmark::State& state) {
    ukp::Kretprobe probe{.kp = {.addr = reinterpret_cast<void*>(&ukp_bench_kret_target)},
                         .handler = [](ukp::KretprobeInstance&, ukp::Regs&) { return 0; },
                         .entry_handler = [](ukp::KretprobeInstance&, ukp::Regs&) { return 0; }};
    if (auto registered = ukp::register_kretprobe(probe); !registered)
        return state.SkipWithError(registered.error().message.c_str());
    auto label = label_if_kind(probe.kp.address(), "optimized");
    if (!label) return state.SkipWithError(label.error().c_str());
    state.SetLabel("entry+return, " + *label);

    int value = 0;
    auto* call = called_from_elsewhere(ukp_bench_kret_target);
    for (auto _ : state) benchmark::DoNotOptimize(value = call(value));

    // Every call hit the entry, none was left unwatched, every watched one
    // returned through the trampoline (npending counts armed, unreturned calls).
    if (probe.kp.nhit() != static_cast<std::uint64_t>(state.iterations()))
        state.SkipWithError("the entry probe missed calls: nhit() != iterations");
    else if (probe.nmissed() != 0 || probe.npending() != 0 || probe.nabandoned() != 0)
        state.SkipWithError("return instances were missed, left pending or abandoned");
    else if (value != static_cast<int>(state.iterations()))
        state.SkipWithError("the probed function computed a wrong result");
    // The object unregisters itself on every way out.
}

void BM_TypedEntryProbe(benchmark::State& state) {
    ukp::EntryProbe<int(int)> probe{&ukp_bench_typed_entry, [](int argument) { benchmark::DoNotOptimize(argument); }};
    if (auto registered = probe.register_probe(); !registered)
        return state.SkipWithError(registered.error().message.c_str());
    auto label = label_if_kind(probe.kprobe().address(), "optimized");
    if (!label) return state.SkipWithError(label.error().c_str());
    state.SetLabel("EntryProbe<int(int)>, " + *label);

    int value = 0;
    auto* call = called_from_elsewhere(ukp_bench_typed_entry);
    for (auto _ : state) benchmark::DoNotOptimize(value = call(value));

    if (probe.nhit() != static_cast<std::uint64_t>(state.iterations()))
        state.SkipWithError("the probe missed calls: nhit() != iterations");
    else if (value != static_cast<int>(state.iterations()))
        state.SkipWithError("the probed function computed a wrong result");
}

void BM_LatencyProbe(benchmark::State& state) {
    ukp::LatencyProbe latency{&ukp_bench_latency_target};
    if (auto registered = latency.register_probe(); !registered)
        return state.SkipWithError(registered.error().message.c_str());
    auto label = label_if_kind(latency.kretprobe().kp.address(), "optimized");
    if (!label) return state.SkipWithError(label.error().c_str());
    state.SetLabel("LatencyProbe, " + *label);

    int value = 0;
    auto* call = called_from_elsewhere(ukp_bench_latency_target);
    for (auto _ : state) benchmark::DoNotOptimize(value = call(value));

    const auto histogram = latency.snapshot();
    if (histogram.count != static_cast<std::uint64_t>(state.iterations()))
        state.SkipWithError("the latency probe recorded a different number of calls than were made");
    else if (value != static_cast<int>(state.iterations()))
        state.SkipWithError("the probed function computed a wrong result");
    else
        state.counters["median_recorded_ns"] = static_cast<double>(histogram.percentile(0.5));
}

// ---- The kernel's uprobe on the same code, through tracefs ----
//
// BM_KernelUprobe: the event ukp_bench/entry_target (`p:`) on
// ukp_bench_uprobe_target.  BM_KernelUprobeUretprobe: ukp_bench/pair_entry
// (`p:`) and ukp_bench/pair_return (`r:`) on ukp_bench_uretprobe_target,
// both enabled, what a kernel tracer timing a function attaches.  Each event
// is created for one benchmark run and removed at its end, on every way out
// (a stale one from a run that crashed is removed first).  The kernel puts
// its int3 into every process that maps this file at that offset; only this
// one calls these functions.

constexpr std::string_view uprobe_group = "ukp_bench";

std::string errno_text(int error) { return std::strerror(error); }

std::expected<void, std::string> write_text(const std::string& path, std::string_view text, int extra_flags = 0) {
    int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC | extra_flags);
    if (fd < 0) return std::unexpected(path + ": " + errno_text(errno));
    ssize_t written = write(fd, text.data(), text.size());
    int error = errno;
    close(fd);
    if (written != static_cast<ssize_t>(text.size()))
        return std::unexpected("writing '" + std::string(text) + "' to " + path + ": " + errno_text(error));
    return {};
}

// Never open uprobe_events with O_TRUNC: that deletes every uprobe event of
// the system.  O_APPEND adds or removes one.
constexpr int uprobe_events_flags = O_APPEND;

// The tracefs directory whose uprobe_events we may write.
std::expected<std::string, std::string> writable_tracefs() {
    std::string reasons;
    for (std::string directory : {"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}) {
        std::string events = directory + "/uprobe_events";
        int fd = open(events.c_str(), O_WRONLY | O_CLOEXEC | uprobe_events_flags);
        if (fd >= 0) {
            close(fd);
            return directory;
        }
        if (!reasons.empty()) reasons += "; ";
        reasons += events + ": " + errno_text(errno);
    }
    return std::unexpected(reasons);
}

// Where `address` of the main program is in its file: what a uprobe names.
std::expected<std::uint64_t, std::string> file_offset_in_executable(const void* address) {
    struct Search {
        std::uint64_t address;
        std::optional<std::uint64_t> offset;
        bool in_main_program;
    } search{reinterpret_cast<std::uint64_t>(address), std::nullopt, false};
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) -> int {
            auto* search = static_cast<Search*>(data);
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const ElfW(Phdr)& header = info->dlpi_phdr[i];
                if (header.p_type != PT_LOAD) continue;
                std::uint64_t start = info->dlpi_addr + header.p_vaddr;
                if (search->address < start || search->address >= start + header.p_filesz) continue;
                search->offset = search->address - start + header.p_offset;
                search->in_main_program = info->dlpi_name == nullptr || info->dlpi_name[0] == '\0';
                return 1;
            }
            return 0;
        },
        &search);
    if (!search.offset) return std::unexpected("the uprobe target is in no loaded segment");
    if (!search.in_main_program) return std::unexpected("the uprobe target is not in the main program");
    return *search.offset;
}

std::expected<std::string, std::string> executable_path() {
    char path[4096];
    ssize_t length = readlink("/proc/self/exe", path, sizeof path - 1);
    if (length < 0) return std::unexpected("readlink /proc/self/exe: " + errno_text(errno));
    std::string result(path, static_cast<std::size_t>(length));
    if (result.find_first_of(" \t\n") != std::string::npos)
        return std::unexpected("the executable's path contains white space: " + result);
    return result;
}

// Where a kernel uprobe on `function` of this program goes: the writable
// tracefs, the executable's path and the function's offset in it.
struct UprobeSite {
    std::string tracefs, file;
    std::uint64_t offset;
};

std::expected<UprobeSite, std::string> uprobe_site_of(const void* function) {
    auto tracefs = writable_tracefs();
    if (!tracefs) return std::unexpected("tracefs uprobe_events not writable: " + tracefs.error());
    auto file = executable_path();
    if (!file) return std::unexpected(file.error());
    auto offset = file_offset_in_executable(function);
    if (!offset) return std::unexpected(offset.error());
    return UprobeSite{*tracefs, *file, *offset};
}

// One uprobe event in uprobe_group: `p:` fires at the function's entry,
// `r:` (a uretprobe) at its return.
enum class UprobeKind : char { Entry = 'p', Return = 'r' };

class KernelUprobe {
public:
    KernelUprobe(std::string tracefs, std::string_view event)
        : tracefs_(std::move(tracefs)),
          event_(event),
          events_(tracefs_ + "/uprobe_events"),
          enable_(tracefs_ + "/events/" + std::string(uprobe_group) + "/" + event_ + "/enable") {
        remove();  // a stale event of a run that crashed
    }
    KernelUprobe(const KernelUprobe&) = delete;
    KernelUprobe& operator=(const KernelUprobe&) = delete;
    ~KernelUprobe() { remove(); }

    std::expected<void, std::string> create(UprobeKind kind, const std::string& file, std::uint64_t offset,
                                            const std::string& fetch_args = {}) {
        char definition[4352];
        std::snprintf(definition, sizeof definition, "%c:%s/%s %s:0x%llx%s%s\n", static_cast<char>(kind),
                      std::string(uprobe_group).c_str(), event_.c_str(), file.c_str(),
                      static_cast<unsigned long long>(offset), fetch_args.empty() ? "" : " ", fetch_args.c_str());
        file_ = file;
        return write_text(events_, definition, uprobe_events_flags);
    }
    std::expected<void, std::string> enable() { return write_text(enable_, "1\n"); }

    // The kernel's hit count for the event (uprobe_profile: file, event,
    // hits).  The kernel counts a `r:` event's hits at the function's entry,
    // where it hijacks the return address.
    std::expected<std::uint64_t, std::string> hits() const {
        std::string profile = tracefs_ + "/uprobe_profile";
        std::FILE* in = std::fopen(profile.c_str(), "re");
        if (!in) return std::unexpected(profile + ": " + errno_text(errno));
        std::optional<std::uint64_t> found;
        char file[4096], event[256];
        unsigned long long hits = 0;
        while (std::fscanf(in, " %4095s %255s %llu", file, event, &hits) == 3)
            if (file_ == file && event_ == event) found = hits;
        std::fclose(in);
        if (!found) return std::unexpected(profile + " does not list the event");
        return *found;
    }

private:
    void remove() {
        (void)write_text(enable_, "0\n");
        (void)write_text(events_, "-:" + std::string(uprobe_group) + "/" + event_ + "\n", uprobe_events_flags);
    }
    std::string tracefs_, event_, events_, enable_, file_;
};

void BM_KernelUprobe(benchmark::State& state) {
    auto site = uprobe_site_of(reinterpret_cast<const void*>(&ukp_bench_uprobe_target));
    if (!site) return state.SkipWithError(site.error().c_str());
    KernelUprobe uprobe(site->tracefs, "entry_target");
    if (auto created = uprobe.create(UprobeKind::Entry, site->file, site->offset); !created)
        return state.SkipWithError(created.error().c_str());
    if (auto enabled = uprobe.enable(); !enabled) return state.SkipWithError(enabled.error().c_str());
    auto before = uprobe.hits();
    if (!before) return state.SkipWithError(before.error().c_str());
    state.SetLabel("kernel uprobe");

    int value = 0;
    for (auto _ : state) benchmark::DoNotOptimize(value = ukp_bench_uprobe_target(value));

    auto after = uprobe.hits();
    if (!after) return state.SkipWithError(after.error().c_str());
    if (*after - *before != static_cast<std::uint64_t>(state.iterations())) {
        std::string message = "the kernel uprobe counted " + std::to_string(*after - *before) + " hits for " +
                              std::to_string(state.iterations()) + " calls";
        state.SkipWithError(message.c_str());
    }
}

// A kernel uprobe and uretprobe on the same function, both enabled: the
// kernel's counterpart of BM_KretprobeEmpty.
void BM_KernelUprobeUretprobe(benchmark::State& state) {
    auto site = uprobe_site_of(reinterpret_cast<const void*>(&ukp_bench_uretprobe_target));
    if (!site) return state.SkipWithError(site.error().c_str());
    // Declared in this order, destroyed (disabled, removed) in the reverse.
    KernelUprobe at_entry(site->tracefs, "pair_entry");
    KernelUprobe at_return(site->tracefs, "pair_return");
    for (auto [event, kind] : {std::pair{&at_entry, UprobeKind::Entry}, {&at_return, UprobeKind::Return}}) {
        if (auto created = event->create(kind, site->file, site->offset); !created)
            return state.SkipWithError(created.error().c_str());
        if (auto enabled = event->enable(); !enabled) return state.SkipWithError(enabled.error().c_str());
    }
    auto entry_before = at_entry.hits();
    if (!entry_before) return state.SkipWithError(entry_before.error().c_str());
    auto exit_before = at_return.hits();
    if (!exit_before) return state.SkipWithError(exit_before.error().c_str());
    state.SetLabel("kernel uprobe+uretprobe");

    int value = 0;
    for (auto _ : state) benchmark::DoNotOptimize(value = ukp_bench_uretprobe_target(value));

    auto entry_after = at_entry.hits();
    if (!entry_after) return state.SkipWithError(entry_after.error().c_str());
    auto exit_after = at_return.hits();
    if (!exit_after) return state.SkipWithError(exit_after.error().c_str());
    const auto calls = static_cast<std::uint64_t>(state.iterations());
    if (*entry_after - *entry_before != calls || *exit_after - *exit_before != calls) {
        std::string message = "the kernel counted " + std::to_string(*entry_after - *entry_before) + " uprobe and " +
                              std::to_string(*exit_after - *exit_before) + " uretprobe hits for " +
                              std::to_string(calls) + " calls";
        state.SkipWithError(message.c_str());
    } else if (value != static_cast<int>(calls)) {
        state.SkipWithError("the probed function computed a wrong result");
    }
}

// ---- Benchmarks: registration ----

void BM_RegisterUnregisterOne(benchmark::State& state) {
    ukp::Kprobe probe;
    probe.addr = reinterpret_cast<void*>(&ukp_bench_register_target);
    probe.pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; };
    {
        if (auto registered = ukp::register_kprobe(probe); !registered)
            return state.SkipWithError(registered.error().message.c_str());
        Registered guard{probe};
        auto kind = kind_of(probe.address());
        if (kind.kind != "optimized")
            return state.SkipWithError(("expected an optimized probe, got " + kind.kind + " " + kind.not_optimized).c_str());
    }
    for (auto _ : state) {
        if (auto registered = ukp::register_kprobe(probe); !registered)
            return state.SkipWithError(registered.error().message.c_str());
        ukp::unregister_kprobe(probe);
    }
    state.SetLabel("optimized");
    state.counters["probes_per_iteration"] = 1;
}

// register_kprobes on `count` functions `function_stride` bytes apart from
// `base`, then unregister_kprobes on them, timed apart (manual time is the
// sum).  Once, untimed, the first iteration checks that every probe has
// `expected_kind` and that each fires once on one call of its function,
// which returns its argument plus `adds`.
void run_registration_batch(benchmark::State& state, const char* base, int count, int adds,
                            std::string_view expected_kind) {
    auto probes = std::make_unique<ukp::Kprobe[]>(static_cast<std::size_t>(count));
    std::vector<ukp::Kprobe*> batch;
    batch.reserve(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) {
        probes[i].addr = const_cast<char*>(base + i * function_stride);
        probes[i].pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; };
        batch.push_back(&probes[i]);
    }
    const auto first = reinterpret_cast<std::uint64_t>(base);
    const auto end = first + static_cast<std::uint64_t>(count) * function_stride;
    std::uint64_t register_ns = 0, unregister_ns = 0;
    std::size_t matching = 0;
    bool checked = false;
    for (auto _ : state) {
        const std::uint64_t t0 = now_ns();
        auto registered = ukp::register_kprobes(batch);
        const std::uint64_t t1 = now_ns();
        if (!registered) return state.SkipWithError(registered.error().message.c_str());
        std::string failure;
        if (!checked) {
            checked = true;
            std::string other;
            for (const auto& info : ukp::list_probes()) {
                if (info.address < first || info.address >= end) continue;
                if (info.kind == expected_kind)
                    ++matching;
                else if (other.empty())
                    other = info.kind + (info.not_optimized.empty() ? "" : " (" + info.not_optimized + ")");
            }
            if (matching != static_cast<std::size_t>(count))
                failure = std::to_string(matching) + " of " + std::to_string(count) + " probes are " +
                          std::string(expected_kind) + "; one is " + other;
            bool computed = true;
            for (int i = 0; i < count; ++i) {
                auto function = reinterpret_cast<int (*)(int)>(reinterpret_cast<std::uintptr_t>(base + i * function_stride));
                computed = computed && function(i) == i + adds;
            }
            std::uint64_t hits = 0;
            for (int i = 0; i < count; ++i) hits += probes[i].nhit();
            if (failure.empty() && hits != static_cast<std::uint64_t>(count))
                failure = "one call of each function gave " + std::to_string(hits) + " hits";
            if (failure.empty() && !computed) failure = "a probed function computed a wrong result";
        }
        const std::uint64_t t2 = now_ns();
        ukp::unregister_kprobes(batch);
        const std::uint64_t t3 = now_ns();
        if (!failure.empty()) return state.SkipWithError(failure.c_str());
        register_ns += t1 - t0;
        unregister_ns += t3 - t2;
        state.SetIterationTime(static_cast<double>((t1 - t0) + (t3 - t2)) * 1e-9);
    }
    const double per_probe = static_cast<double>(state.iterations()) * count * 1e3;
    state.counters["register_us_per_probe"] = static_cast<double>(register_ns) / per_probe;
    state.counters["unregister_us_per_probe"] = static_cast<double>(unregister_ns) / per_probe;
    state.counters["probes_per_iteration"] = count;
    state.SetLabel(std::to_string(matching) + "/" + std::to_string(count) + " " + std::string(expected_kind));
}

void BM_RegisterOptimizedBatch(benchmark::State& state) {
    run_registration_batch(state, ukp_bench_bulk_functions, static_cast<int>(state.range(0)), 1, "optimized");
}
void BM_RegisterInt3Batch(benchmark::State& state) {
    run_registration_batch(state, ukp_bench_tiny_functions, static_cast<int>(state.range(0)), 0, "boosted");
}

// The floors first (the order matters only without interleaving).
// ---- ukprobe (issue 5): a traced hit next to the kernel's uprobe event ----
//
// BM_TracedHit runs the agent's own hit path (src/tracer/agent/hit.cpp, the
// code `ukprobe run` preloads) on an optimized entry probe whose definition
// records two fetch args into the thread's ring, while a reader thread
// drains the rings as the tracer does.  BM_KernelUprobeEvent: the same
// definition as a kernel uprobe event through tracefs, enabled, writing into
// the kernel's trace buffer.

constexpr std::string_view traced_fetch_args = "a=%di:s32 b=%si:x64";

void BM_TracedHit(benchmark::State& state) {
    using namespace ukp::tracer;
    std::string definition_text = "p:bench ukp_bench_traced " + std::string(traced_fetch_args);
    auto definition = parse_definition(definition_text);
    if (!definition) return state.SkipWithError(definition.error().message.c_str());
    std::string error;
    SessionOptions options;
    options.ring_count = 4;
    options.ring_bytes = 1u << 22;
    Session session = Session::create(definition_text + "\n", options, &error);
    if (!session.valid()) return state.SkipWithError(error.c_str());
    session.header().clock = static_cast<std::uint32_t>(ClockKind::Tsc);
    agent::initialize_hit_path(session);
    auto compiled = agent::compile_event(*definition, session, 0, 0);
    if (!compiled) return state.SkipWithError(compiled.error().c_str());
    ukp::Kprobe probe;
    probe.addr = reinterpret_cast<void*>(&ukp_bench_traced);
    probe.data = &*compiled;
    probe.pre_handler = [](ukp::Kprobe& kp, ukp::Regs& regs) {
        agent::on_hit(*static_cast<const agent::CompiledEvent*>(kp.data), regs, 0, regs.ip);
        return 0;
    };
    if (auto registered = ukp::register_kprobe(probe); !registered)
        return state.SkipWithError(registered.error().message.c_str());
    Registered guard{probe};
    auto label = label_if_kind(probe.address(), "optimized");
    if (!label) return state.SkipWithError(label.error().c_str());
    state.SetLabel(*label + " +2 args");

    std::atomic<bool> reading{true};
    std::atomic<std::uint64_t> records{0};
    std::thread reader([&] {
        while (reading.load(std::memory_order_relaxed)) {
            std::uint64_t got = 0;
            for (std::size_t ring = 0; ring < options.ring_count; ++ring)
                got += drain(session, ring, [](const RecordHeader&, std::span<const std::uint8_t>) {});
            records.fetch_add(got, std::memory_order_relaxed);
            if (got == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    });
    int value = 0;
    auto* call = called_from_elsewhere(ukp_bench_traced);
    for (auto _ : state) benchmark::DoNotOptimize(value = call(value));
    reading = false;
    reader.join();
    std::uint64_t tail = 0;
    for (std::size_t ring = 0; ring < options.ring_count; ++ring)
        tail += drain(session, ring, [](const RecordHeader&, std::span<const std::uint8_t>) {});
    records += tail;
    std::uint64_t lost = session.counters(0).lost.load();
    state.counters["lost_share"] = static_cast<double>(lost) / static_cast<double>(state.iterations());
    if (records.load() + lost != static_cast<std::uint64_t>(state.iterations()))
        state.SkipWithError("records + lost != iterations");
    else if (lost * 100 > static_cast<std::uint64_t>(state.iterations()))
        state.SkipWithError("more than 1% of the records were lost: the reader did not keep up");
}

void BM_KernelUprobeEvent(benchmark::State& state) {
    auto site = uprobe_site_of(reinterpret_cast<const void*>(&ukp_bench_kernel_event_target));
    if (!site) return state.SkipWithError(site.error().c_str());
    KernelUprobe uprobe(site->tracefs, "traced_args");
    if (auto created = uprobe.create(UprobeKind::Entry, site->file, site->offset, std::string(traced_fetch_args));
        !created)
        return state.SkipWithError(created.error().c_str());
    if (auto enabled = uprobe.enable(); !enabled) return state.SkipWithError(enabled.error().c_str());
    state.SetLabel("kernel uprobe event +2 args");
    int value = 0;
    for (auto _ : state) benchmark::DoNotOptimize(value = ukp_bench_kernel_event_target(value));
}

// Every benchmark also reports the minimum over its repetitions, which the
// summary uses (see SummaryReporter).
double minimum_of(const std::vector<double>& values) {
    return values.empty() ? 0.0 : *std::min_element(values.begin(), values.end());
}
#define UKP_BENCHMARK(function) BENCHMARK(function)->ComputeStatistics("min", minimum_of)

UKP_BENCHMARK(BM_RawInt3)->UseManualTime();
UKP_BENCHMARK(BM_JumpFloor)->UseRealTime();
UKP_BENCHMARK(BM_BareCall)->UseRealTime();
UKP_BENCHMARK(BM_OptimizedEntry)->UseRealTime();
UKP_BENCHMARK(BM_OptimizedMid)->UseRealTime();
UKP_BENCHMARK(BM_OptimizedPrePost)->UseRealTime();
UKP_BENCHMARK(BM_BoostedProbe)->UseRealTime();
UKP_BENCHMARK(BM_EmulatedProbe)->UseRealTime();
UKP_BENCHMARK(BM_PostHandlerProbe)->UseRealTime();
UKP_BENCHMARK(BM_KretprobeEmpty)->UseRealTime();
UKP_BENCHMARK(BM_TypedEntryProbe)->UseRealTime();
UKP_BENCHMARK(BM_LatencyProbe)->UseRealTime();
UKP_BENCHMARK(BM_KernelUprobe)->UseRealTime();
UKP_BENCHMARK(BM_KernelUprobeUretprobe)->UseRealTime();
UKP_BENCHMARK(BM_TracedHit)->UseRealTime();
UKP_BENCHMARK(BM_KernelUprobeEvent)->UseRealTime();
UKP_BENCHMARK(BM_RegisterUnregisterOne)->UseRealTime()->Unit(benchmark::kMicrosecond);
UKP_BENCHMARK(BM_RegisterOptimizedBatch)
    ->Arg(1000)
    ->Arg(bulk_function_count)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
UKP_BENCHMARK(BM_RegisterInt3Batch)->Arg(tiny_function_count)->UseManualTime()->Unit(benchmark::kMillisecond);

// ---- Reporting: ratios against the floors of this run, and the targets ----

double to_ns(double value, benchmark::TimeUnit unit) {
    switch (unit) {
    case benchmark::kSecond: return value * 1e9;
    case benchmark::kMillisecond: return value * 1e6;
    case benchmark::kMicrosecond: return value * 1e3;
    case benchmark::kNanosecond: return value;
    }
    return value;
}

// The issue's targets.
constexpr double entry_vs_floor_target = 1.5;   // at most
constexpr double mid_vs_floor_target = 2.0;     // at most
constexpr double uprobe_vs_entry_target = 100;  // at least
constexpr double register_us_target = 5;        // at most, per probe of a 10,000-probe batch
constexpr double kretprobe_vs_entry_target = 2.5;     // at most (issue 4)
constexpr double uretprobe_vs_kretprobe_target = 100; // at least (issue 4)
constexpr double traced_hit_ns_target = 25;           // at most (issue 5)
constexpr double kernel_event_vs_traced_target = 50;  // at least (issue 5)

// Holds every result until the run ends, because with random interleaving a
// floor may be reported after the benchmarks it divides; then adds the
// ratio counters, prints the usual console table and a summary.
class SummaryReporter : public benchmark::ConsoleReporter {
public:
    SummaryReporter() : ConsoleReporter(OO_None) {}

    void ReportRuns(const std::vector<Run>& reports) override {
        held.insert(held.end(), reports.begin(), reports.end());
    }

    void Finalize() override {
        // 1. The floors, per aggregate ("" for single runs, "mean", "median",
        //    "min").
        std::map<std::string, double> int3_ns, floor_ns;
        for (const auto& run : held) {
            if (!is_time(run)) continue;
            if (run.run_name.function_name == "BM_RawInt3") int3_ns[run.aggregate_name] = ns_of(run);
            if (run.run_name.function_name == "BM_JumpFloor") floor_ns[run.aggregate_name] = ns_of(run);
        }

        // 2. Ratios for hits; the summary's rows: the minimum over the
        //    repetitions when repeated, and the median beside it.  Noise on a
        //    shared VM (other guests, frequency changes) only ever adds time
        //    to code that does the same work on every iteration, so the
        //    quietest repetition is the best estimate of what the code costs;
        //    the median shows how much the run was disturbed.  Every row and
        //    both floors are treated the same way, so ratios compare like
        //    with like.
        for (auto& run : held) {
            if (run.error_occurred) {
                errors[key_of(run)] = run.error_message;
                continue;
            }
            if (!is_time(run)) continue;
            const bool registration = run.counters.count("probes_per_iteration") != 0;
            Row row{run.report_label, ns_of(run), 0, 0, {}};
            if (!registration) {
                if (auto floor = floor_ns.find(run.aggregate_name); floor != floor_ns.end())
                    run.counters["vs_floor"] = row.vs_floor = row.ns / floor->second;
                if (auto floor = int3_ns.find(run.aggregate_name); floor != int3_ns.end())
                    run.counters["vs_int3"] = row.vs_int3 = row.ns / floor->second;
            }
            for (const auto& [name, counter] : run.counters) row.counters[name] = counter.value;
            if (run.run_type == Run::RT_Iteration ? run.repetitions <= 1 : run.aggregate_name == "min")
                rows[key_of(run)] = row;
            if (run.aggregate_name == "median") medians[key_of(run)] = row;
        }

        // 3. The console table, in the order Google Benchmark ran things.
        ConsoleReporter::ReportRuns(held);
        ConsoleReporter::Finalize();

        // 4. The summary, in a fixed order.
        std::FILE* out = stdout;
        const bool repeated = std::any_of(held.begin(), held.end(),
                                          [](const Run& run) { return run.run_type == Run::RT_Aggregate; });
        std::fprintf(out,
                     "\nSummary (%s real time).  vs_floor = time / hand-written jump floor, vs_int3 = time / int3 "
                     "floor, both of this run.\n(BM_RawInt3's CPU column above is the parent's, waiting on the "
                     "pipe.)\n",
                     repeated ? "minimum over the repetitions, median beside it:" : "single runs");
        std::fprintf(out, "%-24s %-44s %10s %9s %9s %10s %9s\n", "hit", "kind", "ns/hit", "vs_floor", "vs_int3",
                     "median ns", "vs_floor");
        for (const char* name : {"BM_BareCall", "BM_JumpFloor", "BM_OptimizedEntry", "BM_OptimizedMid",
                                 "BM_OptimizedPrePost", "BM_BoostedProbe", "BM_EmulatedProbe", "BM_PostHandlerProbe",
                                 "BM_KretprobeEmpty", "BM_TypedEntryProbe", "BM_LatencyProbe", "BM_RawInt3",
                                 "BM_KernelUprobe", "BM_KernelUprobeUretprobe", "BM_TracedHit",
                                 "BM_KernelUprobeEvent"}) {
            if (const Row* row = find(name)) {
                const Row* median = find_median(name);
                std::fprintf(out, "%-24s %-44s %10.1f %9s %9s %10s %9s\n", name, row->label.c_str(), row->ns,
                             fixed(row->vs_floor, "%.2f").c_str(), fixed(row->vs_int3, "%.4f").c_str(),
                             fixed(median ? median->ns : -1, "%.1f").c_str(),
                             fixed(median ? median->vs_floor : -1, "%.2f").c_str());
            } else
                std::fprintf(out, "%-24s skipped: %s\n", name, error_of(name).c_str());
        }

        std::fprintf(out, "+xmm,...: the vector state in use (XINUSE) as the loop started; an optimized probe's "
                          "trampoline saves it\n(entry: only the argument registers' part, x/y/zmm0-7; "
                          "mid-function: all of it).\n");
        std::fprintf(out, "\n%-32s %-22s %14s %14s %12s\n", "registration", "kind", "register", "unregister",
                     "ms/iteration");
        std::fprintf(out, "%-32s %-22s %14s %14s\n", "", "", "us/probe", "us/probe");
        for (const char* name : {"BM_RegisterUnregisterOne", "BM_RegisterOptimizedBatch/1000",
                                 "BM_RegisterOptimizedBatch/10000", "BM_RegisterInt3Batch/1000"}) {
            const Row* row = find(name);
            if (!row) {
                std::fprintf(out, "%-32s skipped: %s\n", name, error_of(name).c_str());
                continue;
            }
            if (row->counters.count("register_us_per_probe"))
                std::fprintf(out, "%-32s %-22s %14.2f %14.2f %12.2f\n", name, row->label.c_str(),
                             row->counters.at("register_us_per_probe"), row->counters.at("unregister_us_per_probe"),
                             row->ns / 1e6);
            else
                std::fprintf(out, "%-32s %-22s %29s %12.4f\n", name, row->label.c_str(),
                             (fixed(row->ns / 1e3, "%.2f") + " (both)").c_str(), row->ns / 1e6);
        }

        auto ratio = [&](const char* over, const char* under) {
            auto of = [&](const Row* a, const Row* b) { return a && b ? a->ns / b->ns : -1; };
            return Measured{of(find(over), find(under)), of(find_median(over), find_median(under))};
        };
        auto absent = [&](const char* first, const char* second) { return find(first) ? second : first; };

        std::fprintf(out, "\n%-44s %10s %10s  %-6s  %s\n", "target (issue 3)", "measured", "target", "", "median");
        const Row* bulk = find("BM_RegisterOptimizedBatch/10000");
        const Row* bulk_median = find_median("BM_RegisterOptimizedBatch/10000");
        target(out, "optimized entry / jump floor", ratio("BM_OptimizedEntry", "BM_JumpFloor"), "<=",
               entry_vs_floor_target, absent("BM_OptimizedEntry", "BM_JumpFloor"));
        target(out, "optimized mid-function / jump floor", ratio("BM_OptimizedMid", "BM_JumpFloor"), "<=",
               mid_vs_floor_target, absent("BM_OptimizedMid", "BM_JumpFloor"));
        target(out, "kernel uprobe / optimized entry", ratio("BM_KernelUprobe", "BM_OptimizedEntry"), ">=",
               uprobe_vs_entry_target, absent("BM_KernelUprobe", "BM_OptimizedEntry"));
        target(out, "register+optimize, 10,000-probe batch (us)",
               {bulk ? bulk->counters.at("register_us_per_probe") : -1,
                bulk_median ? bulk_median->counters.at("register_us_per_probe") : -1},
               "<=", register_us_target, "BM_RegisterOptimizedBatch/10000");

        std::fprintf(out, "\n%-44s %10s %10s  %-6s  %s\n", "target (issue 4)", "measured", "target", "", "median");
        target(out, "kretprobe (entry+return) / optimized entry", ratio("BM_KretprobeEmpty", "BM_OptimizedEntry"),
               "<=", kretprobe_vs_entry_target, absent("BM_KretprobeEmpty", "BM_OptimizedEntry"));
        target(out, "kernel uprobe+uretprobe / kretprobe", ratio("BM_KernelUprobeUretprobe", "BM_KretprobeEmpty"),
               ">=", uretprobe_vs_kretprobe_target, absent("BM_KernelUprobeUretprobe", "BM_KretprobeEmpty"));

        std::fprintf(out, "\n%-44s %10s %10s  %-6s  %s\n", "target (issue 5)", "measured", "target", "", "median");
        const Row* traced = find("BM_TracedHit");
        const Row* traced_median = find_median("BM_TracedHit");
        target(out, "traced hit, 2 args into the ring (ns)",
               {traced ? traced->ns : -1, traced_median ? traced_median->ns : -1}, "<=", traced_hit_ns_target,
               "BM_TracedHit");
        target(out, "kernel uprobe event / traced hit", ratio("BM_KernelUprobeEvent", "BM_TracedHit"), ">=",
               kernel_event_vs_traced_target, absent("BM_KernelUprobeEvent", "BM_TracedHit"));
    }

private:
    struct Row {
        std::string label;
        double ns, vs_floor, vs_int3;
        std::map<std::string, double> counters;
    };
    static double ns_of(const Run& run) { return to_ns(run.GetAdjustedRealTime(), run.time_unit); }
    static std::string key_of(const Run& run) {
        return run.run_name.function_name + (run.run_name.args.empty() ? "" : "/" + run.run_name.args);
    }
    static std::string fixed(double value, const char* format) {
        if (value <= 0) return "-";
        char text[32];
        std::snprintf(text, sizeof text, format, value);
        return text;
    }
    // Standard deviation and coefficient of variation are not times.
    static bool is_time(const Run& run) {
        return !run.error_occurred && (run.run_type == Run::RT_Iteration || run.aggregate_name == "mean" ||
                                       run.aggregate_name == "median" || run.aggregate_name == "min");
    }
    const Row* find(const std::string& key) const {
        auto row = rows.find(key);
        return row == rows.end() ? nullptr : &row->second;
    }
    const Row* find_median(const std::string& key) const {
        auto row = medians.find(key);
        return row == medians.end() ? nullptr : &row->second;
    }
    std::string error_of(const std::string& key) const {
        auto error = errors.find(key);
        return error == errors.end() ? "not run (filtered out?)" : error->second;
    }
    // A target's value from the minimum rows, and from the medians.
    struct Measured {
        double value, median;
    };
    void target(std::FILE* out, const char* what, Measured measured, const char* relation, double goal,
                const std::string& missing) const {
        if (measured.value < 0) {
            std::fprintf(out, "%-44s %10s %7s %-4g  not measured: %s: %s\n", what, "-", relation, goal,
                         missing.c_str(), error_of(missing).c_str());
            return;
        }
        const bool met = relation[0] == '<' ? measured.value <= goal : measured.value >= goal;
        std::fprintf(out, "%-44s %10.2f %7s %-4g  %-6s  %s\n", what, measured.value, relation, goal,
                     met ? "met" : "MISSED", fixed(measured.median, "%.2f").c_str());
    }
    std::vector<Run> held;
    std::map<std::string, Row> rows;
    std::map<std::string, Row> medians;  // empty for single runs
    std::map<std::string, std::string> errors;
};

}  // namespace

int main(int argc, char** argv) {
    // Step 1 of the protocol above: fork the int3 child before any probe
    // exists, so that its SIGTRAP handler is the kernel's direct target.
    auto server = Int3FloorServer::start();
    if (server)
        int3_floor = server->get();
    else
        std::fprintf(stderr, "ukp_bench: %s; BM_RawInt3 will be skipped\n", server.error().c_str());

    // Defaults that flags on the command line override (the last one wins):
    // seven repetitions, interleaved in random order so that a burst of load
    // on the machine spreads over all benchmarks instead of skewing one, and
    // aggregates only (the summary uses the minimum, see SummaryReporter).
    std::vector<char*> arguments{argv[0]};
    char repetitions[] = "--benchmark_repetitions=7";
    char interleave[] = "--benchmark_enable_random_interleaving=true";
    char aggregates_only[] = "--benchmark_report_aggregates_only=true";
    arguments.insert(arguments.end(), {repetitions, interleave, aggregates_only});
    arguments.insert(arguments.end(), argv + 1, argv + argc);
    int argument_count = static_cast<int>(arguments.size());
    arguments.push_back(nullptr);
    argv = arguments.data();
    argc = argument_count;

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    SummaryReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    benchmark::Shutdown();
    return 0;
}
