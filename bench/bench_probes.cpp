// ukp_bench: what a probe hit and a registration cost.
//
// The figure that matters is a probe hit relative to the floor no int3-based
// probe can beat: one int3, the kernel's SIGTRAP delivery to a handler that
// does nothing, and rt_sigreturn.  Every benchmark reports its time per hit
// and `ratio_vs_int3`, its time divided by that floor measured in the same
// run.
//
// Measuring the floor needs a SIGTRAP handler of our own, and once a probe is
// registered ukprobes owns SIGTRAP: it interposes sigaction(), and a program
// int3 reaches the program's handler only through ukprobes' trap handler,
// which adds exactly the cost we want to leave out.  Running the floor first
// would depend on benchmark order and filters, and going around the
// interposition with a raw rt_sigaction would fight the library.  So:
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
// RatioReporter divides every result by BM_RawInt3's and prints a summary.
// Any single figure here moves by 10-20% with load on a small VM; the
// defaults in main() (repetitions, interleaving, medians) damp that.
//
// The probed functions are written in assembly so that the probed
// instruction, and with it the way ukprobes handles it, is known exactly:
// `mov %edi,%eax` is boosted (run out of line, jump back: one trap), `push
// %rbp` is emulated (done inside the trap handler: one trap), and a
// post-handler adds a second trap after the out-of-line instruction.
// Each benchmark labels itself with the kind ukprobes reports, so a change in
// that decision shows in the output.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <expected>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ukprobes/ukprobes.hpp"

extern "C" {
int ukp_bench_bare(int value);
int ukp_bench_raw_int3(int value);
int ukp_bench_boostable(int value);
int ukp_bench_emulated(int value);
int ukp_bench_post(int value);
int ukp_bench_register_target(int value);
extern const char ukp_bench_tiny_functions[];
}

// Every function returns its argument plus one.  Bytes with their
// disassembly; the first instruction is the one probed.
asm(R"(
    .text
    .macro ukp_bench_function name
    .p2align 4
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
    # 1000 probe addresses, each at a function entry as most probes are.
    # (\@ numbers the expansions, so each function has its own symbol.)
    .macro ukp_bench_tiny_function
    .p2align 4
    .type ukp_bench_tiny_\@, @function
ukp_bench_tiny_\@:
    mov %edi, %eax              # 89 f8
    ret                         # c3
    .size ukp_bench_tiny_\@, .-ukp_bench_tiny_\@
    .endm
    .p2align 4
    .globl ukp_bench_tiny_functions
ukp_bench_tiny_functions:
    .rept 1000
    ukp_bench_tiny_function
    .endr
    .purgem ukp_bench_tiny_function
)");

namespace {

constexpr int tiny_function_count = 1000;
constexpr int tiny_function_stride = 16;  // .p2align 4
constexpr benchmark::IterationCount int3_batch = 1000;

// ---- The int3 floor, measured in a child that ukprobes never touched ----

void ignore_sigtrap(int, siginfo_t*, void*) {}

std::uint64_t now_ns() {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(now.tv_nsec);
}

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

// ---- Benchmarks ----

void BM_BareCall(benchmark::State& state) {
    int value = 0;
    for (auto _ : state) benchmark::DoNotOptimize(value = ukp_bench_bare(value));
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

std::string kind_of(void* address) {
    for (const auto& probe : ukp::list_probes())
        if (probe.address == reinterpret_cast<std::uint64_t>(address)) return probe.kind;
    return "not listed";
}

// One probe on `function` with an empty pre-handler (and post-handler if
// asked); each iteration is one call, so one hit.
void run_probed_calls(benchmark::State& state, int (*function)(int), bool with_post_handler) {
    ukp::Kprobe probe;
    probe.addr = reinterpret_cast<void*>(function);
    probe.pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; };
    if (with_post_handler) probe.post_handler = [](ukp::Kprobe&, ukp::Regs&, unsigned long) {};
    if (auto registered = ukp::register_kprobe(probe); !registered)
        return state.SkipWithError(registered.error().message.c_str());
    state.SetLabel(kind_of(probe.address()));

    int value = 0;
    for (auto _ : state) benchmark::DoNotOptimize(value = function(value));

    auto hits = probe.nhit();
    ukp::unregister_kprobe(probe);
    if (hits != static_cast<std::uint64_t>(state.iterations()))
        state.SkipWithError("the probe missed calls: nhit() != iterations");
}

void BM_BoostedProbe(benchmark::State& state) { run_probed_calls(state, ukp_bench_boostable, false); }
void BM_EmulatedProbe(benchmark::State& state) { run_probed_calls(state, ukp_bench_emulated, false); }
void BM_PostHandlerProbe(benchmark::State& state) { run_probed_calls(state, ukp_bench_post, true); }

void BM_RegisterUnregisterOne(benchmark::State& state) {
    ukp::Kprobe probe;
    probe.addr = reinterpret_cast<void*>(&ukp_bench_register_target);
    probe.pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; };
    for (auto _ : state) {
        if (auto registered = ukp::register_kprobe(probe); !registered)
            return state.SkipWithError(registered.error().message.c_str());
        ukp::unregister_kprobe(probe);
    }
    state.counters["probes_per_iteration"] = 1;
}

void BM_RegisterUnregisterBatch(benchmark::State& state) {
    auto probes = std::make_unique<ukp::Kprobe[]>(tiny_function_count);
    std::vector<ukp::Kprobe*> batch;
    for (int i = 0; i < tiny_function_count; ++i) {
        probes[i].addr = const_cast<char*>(ukp_bench_tiny_functions + i * tiny_function_stride);
        probes[i].pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; };
        batch.push_back(&probes[i]);
    }
    for (auto _ : state) {
        if (auto registered = ukp::register_kprobes(batch); !registered)
            return state.SkipWithError(registered.error().message.c_str());
        ukp::unregister_kprobes(batch);
    }
    state.counters["probes_per_iteration"] = tiny_function_count;
}

// The floor first: RatioReporter needs it before the others report.
BENCHMARK(BM_RawInt3)->UseManualTime();
BENCHMARK(BM_BareCall)->UseRealTime();
BENCHMARK(BM_BoostedProbe)->UseRealTime();
BENCHMARK(BM_EmulatedProbe)->UseRealTime();
BENCHMARK(BM_PostHandlerProbe)->UseRealTime();
BENCHMARK(BM_RegisterUnregisterOne)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RegisterUnregisterBatch)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- Reporting: ratios against the int3 floor of this run ----

double to_ns(double value, benchmark::TimeUnit unit) {
    switch (unit) {
    case benchmark::kSecond: return value * 1e9;
    case benchmark::kMillisecond: return value * 1e6;
    case benchmark::kMicrosecond: return value * 1e3;
    case benchmark::kNanosecond: return value;
    }
    return value;
}

// Holds every result until the run ends, because with random interleaving
// the floor may be reported after the benchmarks it divides; then adds the
// counters, prints the usual console table and a summary.
class RatioReporter : public benchmark::ConsoleReporter {
public:
    RatioReporter() : ConsoleReporter(OO_None) {}

    void ReportRuns(const std::vector<Run>& reports) override {
        held.insert(held.end(), reports.begin(), reports.end());
    }

    void Finalize() override {
        // 1. The floor, per aggregate ("" for single runs, "mean", "median").
        std::map<std::string, double> int3_ns;
        for (const auto& run : held)
            if (is_time(run) && run.run_name.function_name == "BM_RawInt3")
                int3_ns[run.aggregate_name] = to_ns(run.GetAdjustedRealTime(), run.time_unit);

        // 2. Ratios for hits, per-probe cost for registrations.
        std::vector<Row> rows;
        for (auto& run : held) {
            if (!is_time(run)) continue;
            double ns = to_ns(run.GetAdjustedRealTime(), run.time_unit);
            Row row{run.benchmark_name(), run.report_label, ns, 0, 0};
            if (auto per = run.counters.find("probes_per_iteration"); per != run.counters.end()) {
                row.ns_per_probe = ns / per->second.value;
                run.counters["ns_per_probe"] = row.ns_per_probe;
            } else if (auto floor = int3_ns.find(run.aggregate_name); floor != int3_ns.end()) {
                row.ratio = ns / floor->second;
                run.counters["ratio_vs_int3"] = row.ratio;
            }
            // The summary shows medians when there are repetitions.
            if (run.run_type == Run::RT_Iteration ? run.repetitions <= 1 : run.aggregate_name == "median")
                rows.push_back(row);
        }

        // 3. The console table, in the order Google Benchmark ran things.
        ConsoleReporter::ReportRuns(held);
        ConsoleReporter::Finalize();

        // 4. The summary, in the order the benchmarks are declared.
        std::FILE* out = stdout;
        bool has_aggregates = std::any_of(held.begin(), held.end(),
                                          [](const Run& run) { return run.run_type == Run::RT_Aggregate; });
        std::fprintf(out, "\nSummary: %s real time; ratio = time / int3 floor of this run.\n"
                          "(BM_RawInt3's CPU column above is the parent's, waiting on the pipe.)\n",
                     has_aggregates ? "median" : "per-run");
        std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.name < b.name; });
        std::fprintf(out, "%-22s %-20s %10s %14s\n", "hit", "kind", "ns/hit", "ratio_vs_int3");
        for (const auto& name : {"BM_RawInt3", "BM_BareCall", "BM_BoostedProbe", "BM_EmulatedProbe",
                                 "BM_PostHandlerProbe"})
            for (const auto& row : rows)
                if (row.name.starts_with(std::string(name) + "/"))
                    std::fprintf(out, "%-22s %-20s %10.1f %14s\n", name, row.label.c_str(), row.ns,
                                 row.ratio > 0 ? fixed3(row.ratio).c_str() : "-");
        std::fprintf(out, "%-22s %-20s %10s %14s\n", "registration", "", "us/probe", "ms/iteration");
        for (const auto& name : {"BM_RegisterUnregisterOne", "BM_RegisterUnregisterBatch"})
            for (const auto& row : rows)
                if (row.name.starts_with(std::string(name) + "/"))
                    std::fprintf(out, "%-43s %10.1f %14.3f\n", name, row.ns_per_probe / 1e3, row.ns / 1e6);
    }

private:
    struct Row {
        std::string name, label;
        double ns, ratio, ns_per_probe;
    };
    static std::string fixed3(double value) {
        char text[32];
        std::snprintf(text, sizeof text, "%.3f", value);
        return text;
    }
    // Standard deviation and coefficient of variation are not times.
    static bool is_time(const Run& run) {
        return !run.error_occurred && (run.run_type == Run::RT_Iteration || run.aggregate_name == "mean" ||
                                       run.aggregate_name == "median");
    }
    std::vector<Run> held;
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
    // five repetitions, interleaved in random order so that a burst of load
    // on the machine spreads over all benchmarks instead of skewing one, and
    // medians and spread only.
    std::vector<char*> arguments{argv[0]};
    char repetitions[] = "--benchmark_repetitions=5";
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
    RatioReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    benchmark::Shutdown();
    return 0;
}
