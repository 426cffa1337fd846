// `ukprobe run`: start a program with the agent preloaded, stream its
// events out, print a summary when it exits.
//
// The program must behave as without us: it keeps our stdin/stdout/stderr,
// its environment is put back by the agent before its code runs, and we
// leave the terminal's signals to it: Ctrl-C reaches the program (same
// process group) while we ignore it and keep reading until it exits.  We
// then exit the way it did (same code, or the same signal).
//
// Events are read from the session's rings every few milliseconds; the
// program never waits for us (full rings drop and count).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>

#include "tracer/cli/commands.hpp"
#include "tracer/cli/decoder.hpp"
#include "tracer/output.hpp"
#include "tracer/session.hpp"

namespace ukp::tracer::cli {

// The agent counts into the session's buckets what Log2Histogram prints.
static_assert(histogram_buckets == Log2Histogram::bucket_count);

namespace {

volatile sig_atomic_t stats_requested = 0;
volatile sig_atomic_t forward_signal = 0;

std::uint64_t monotonic_ns() {
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(now.tv_nsec);
}

bool has_invariant_tsc() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
        if (line.rfind("flags", 0) != 0) continue;
        return line.find(" constant_tsc") != std::string::npos && line.find(" nonstop_tsc") != std::string::npos;
    }
    return false;
}

// ns = monotonic_base + (ticks - tsc_base) * mult >> shift, measured over a
// short busy interval; the error (~0.1% here) is far below run-to-run noise.
void calibrate_clock(SessionHeader& header) {
    if (!has_invariant_tsc()) {
        header.clock = static_cast<std::uint32_t>(ClockKind::Monotonic);
        return;
    }
    std::uint64_t ns0 = monotonic_ns(), tsc0 = __rdtsc();
    std::uint64_t ns1 = ns0, tsc1 = tsc0;
    while (ns1 - ns0 < 20'000'000) {
        ns1 = monotonic_ns();
        tsc1 = __rdtsc();
    }
    constexpr unsigned shift = 32;
    header.clock = static_cast<std::uint32_t>(ClockKind::Tsc);
    header.tsc_shift = shift;
    header.tsc_mult = static_cast<std::uint64_t>((static_cast<unsigned __int128>(ns1 - ns0) << shift) / (tsc1 - tsc0));
    header.tsc_base = tsc1;
    header.monotonic_base = ns1;
}

std::string agent_path() {
    if (const char* given = std::getenv("UKPROBE_AGENT"); given != nullptr && *given) return given;
    char self[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0) return {};
    std::string directory(self, static_cast<std::size_t>(length));
    directory.erase(directory.rfind('/'));
    for (const char* relative : {"/libukprobe-agent.so", "/../lib/ukprobes/libukprobe-agent.so",
                                 "/../lib/x86_64-linux-gnu/ukprobes/libukprobe-agent.so"}) {
        std::string candidate = directory + relative;
        if (access(candidate.c_str(), R_OK) == 0) {
            char resolved[PATH_MAX];
            if (realpath(candidate.c_str(), resolved) != nullptr) return resolved;
        }
    }
    return {};
}

struct sigaction original_interrupt, original_quit, original_pipe;

pid_t start_program(const RunOptions& options, const Session& session, const std::string& agent) {
    const char* preload = std::getenv("LD_PRELOAD");
    std::string original = preload != nullptr ? preload : "\x01unset";
    // Prepend: the user's preloads keep working, after ours.
    std::string combined = agent + (preload != nullptr && *preload ? ":" + std::string(preload) : "");
    // A close-on-exec pipe tells the parent whether exec worked: it reads
    // end of file on success, the child's errno on failure.
    int exec_status[2];
    if (pipe2(exec_status, O_CLOEXEC) != 0) return -1;
    pid_t child = fork();
    if (child != 0) {
        close(exec_status[1]);
        int error = 0;
        if (child > 0 && read(exec_status[0], &error, sizeof error) == static_cast<ssize_t>(sizeof error)) {
            fmt::print(stderr, "ukprobe: error: cannot run '{}': {}\n", options.command[0], std::strerror(error));
            waitpid(child, nullptr, 0);
            child = -2;
        }
        close(exec_status[0]);
        return child;
    }
    close(exec_status[0]);
    sigaction(SIGINT, &original_interrupt, nullptr);
    sigaction(SIGQUIT, &original_quit, nullptr);
    sigaction(SIGPIPE, &original_pipe, nullptr);
    int fd = session.fd();
    fcntl(fd, F_SETFD, 0);  // inherited by the program, for the agent only
    setenv("UKPROBE_SESSION_FD", std::to_string(fd).c_str(), 1);
    setenv("UKPROBE_ORIGINAL_LD_PRELOAD", original.c_str(), 1);
    setenv("LD_PRELOAD", combined.c_str(), 1);
    std::vector<char*> argv;
    for (const auto& argument : options.command) argv.push_back(const_cast<char*>(argument.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    int error = errno;
    (void)!write(exec_status[1], &error, sizeof error);
    _exit(127);
}

struct Totals {
    std::map<std::uint16_t, std::uint64_t> recorded;  // records read, per event
    std::uint64_t undecodable = 0;
};

void print_reports(const Session& session, std::uint32_t* consumed) {
    std::string_view text = session.reports(consumed);
    while (!text.empty()) {
        std::size_t end = text.find('\n');
        fmt::print(stderr, "ukprobe: {}\n", text.substr(0, end));
        if (end == std::string_view::npos) break;
        text.remove_prefix(end + 1);
    }
}

std::size_t drain_all(const Session& session, Decoder& decoder, EventWriter* writer, Totals& totals,
                      bool* write_failed) {
    std::size_t records = 0;
    DecodedEvent event;
    for (std::uint32_t ring = 0; ring < session.header().ring_count; ++ring) {
        RingHeader& header = session.ring(ring);
        if (header.generation.load(std::memory_order_relaxed) == 0) continue;  // never claimed
        if (int tid = header.comm_tid.load(std::memory_order_acquire); tid > 0)
            decoder.learn_comm(tid, std::string_view(header.comm, strnlen(header.comm, sizeof header.comm)));
        records += drain(session, ring, [&](const RecordHeader& record, std::span<const std::uint8_t> bytes) {
            if (!decoder.decode(record, bytes, &event)) {
                ++totals.undecodable;
                return;
            }
            ++totals.recorded[record.event];
            if (writer != nullptr && !*write_failed) {
                if (auto written = writer->write(event); !written) {
                    fmt::print(stderr, "ukprobe: writing events failed: {}\n", written.error().message);
                    *write_failed = true;
                }
            }
        });
    }
    return records;
}

void print_summary(const Session& session, const Totals& totals, const RunOptions& options, std::FILE* out) {
    std::uint32_t events = session.header().event_count.load(std::memory_order_acquire);
    const SessionHeader& header = session.header();
    if (header.mode & mode_count) {
        std::vector<CountEntry> entries;
        for (std::uint32_t i = 0; i < events; ++i)
            entries.push_back({session.event(i).event, session.counters(i).counted.load()});
        fmt::print(out, "{}", format_counts("@count", entries));
    }
    if (header.mode & (mode_hist | mode_latency)) {
        for (std::uint32_t i = 0; i < events; ++i) {
            HistogramArea* area = session.histogram(i);
            if (area == nullptr || area->count.load() == 0) continue;
            std::array<std::uint64_t, Log2Histogram::bucket_count> buckets;
            for (std::size_t b = 0; b < buckets.size(); ++b) buckets[b] = area->buckets[b].load();
            auto histogram = Log2Histogram::from_buckets(buckets, area->sum.load(), area->min.load(), area->max.load());
            bool latency = (header.mode & mode_latency) && session.event(i).is_return;
            std::string title = latency ? fmt::format("@latency_ns[{}]", session.event(i).event)
                                        : fmt::format("@{}[{}]", options.hist_field, session.event(i).event);
            fmt::print(out, "{}\n", format_histogram(title, histogram, {.unit = latency ? "ns" : ""}));
        }
    }
    std::fflush(out);  // the aggregations before the table, when both reach one terminal
    if (options.quiet) return;
    std::vector<ProfileRow> rows;
    bool any_lost = header.lost_no_ring.load() != 0, any_fault = false;
    for (std::uint32_t i = 0; i < events; ++i) {
        const EventCounters& counters = session.counters(i);
        ProfileRow row;
        row.event = fmt::format("{}/{}", session.event(i).group, session.event(i).event);
        auto recorded = totals.recorded.find(static_cast<std::uint16_t>(i));
        std::uint64_t seen = (header.mode & mode_stream) ? (recorded == totals.recorded.end() ? 0 : recorded->second)
                                                        : counters.counted.load();
        row.hits = (header.mode & mode_stream) ? seen + counters.filtered.load() + counters.lost.load()
                                               : counters.hits.load();
        row.misses = counters.missed.load();
        row.lost = counters.lost.load();
        row.faults = counters.faults.load();
        any_lost |= row.lost != 0;
        any_fault |= row.faults != 0;
        rows.push_back(std::move(row));
    }
    fmt::print(stderr, "\nukprobe: {} event{} armed\n", events, events == 1 ? "" : "s");
    fmt::print(stderr, "{}", format_profile(rows, {.header = true, .show_lost = true, .show_faults = true}));
    if (any_lost)
        fmt::print(stderr, "ukprobe: events were lost (rings full: try --buffer-size; {} hits found no free ring)\n",
                   header.lost_no_ring.load());
}

}  // namespace

int run(const RunOptions& options) {
    auto loaded = load_definitions(options.definitions, options.files);
    if (!loaded) return 2;
    if (loaded->parsed.empty()) {
        fmt::print(stderr, "ukprobe: error: no probe definitions (-e or -f)\n");
        return 2;
    }
    std::string agent = agent_path();
    if (agent.empty()) {
        fmt::print(stderr, "ukprobe: error: cannot find libukprobe-agent.so next to ukprobe (set UKPROBE_AGENT)\n");
        return 2;
    }
    std::string text;
    for (const auto& definition : loaded->parsed) text += definition.command + "\n";
    SessionOptions session_options;
    session_options.mode = 0;
    if (options.count) session_options.mode |= mode_count;
    if (!options.hist_field.empty()) session_options.mode |= mode_hist;
    if (options.latency) session_options.mode |= mode_latency;
    if (session_options.mode == 0) session_options.mode = mode_stream;
    session_options.hist_field = options.hist_field;
    if ((options.buffer_kib & (options.buffer_kib - 1)) != 0) {
        fmt::print(stderr, "ukprobe: error: --buffer-size must be a power of two (KiB)\n");
        return 2;
    }
    session_options.ring_bytes = options.buffer_kib * 1024u;
    session_options.string_limit = options.string_size;
    if (options.latency &&
        std::none_of(loaded->parsed.begin(), loaded->parsed.end(),
                     [](const Definition& d) { return d.type == ProbeType::Return; })) {
        fmt::print(stderr, "ukprobe: error: --latency needs a return probe (r:... or SYM%return)\n");
        return 2;
    }
    if (!options.hist_field.empty() &&
        std::none_of(loaded->parsed.begin(), loaded->parsed.end(), [&](const Definition& d) {
            return std::any_of(d.args.begin(), d.args.end(), [&](const FetchArg& a) { return a.name == options.hist_field; });
        })) {
        fmt::print(stderr, "ukprobe: error: --hist {}: no definition has a field of that name\n", options.hist_field);
        return 2;
    }
    std::string error;
    Session session = Session::create(text, session_options, &error);
    if (!session.valid()) {
        fmt::print(stderr, "ukprobe: error: {}\n", error);
        return 2;
    }
    calibrate_clock(session.header());

    auto format = parse_format(options.format);
    std::FILE* out = stdout;
    if (!options.output.empty()) {
        out = std::fopen(options.output.c_str(), "w");
        if (out == nullptr) {
            fmt::print(stderr, "ukprobe: error: cannot write '{}': {}\n", options.output, std::strerror(errno));
            return 2;
        }
    }
    std::unique_ptr<EventWriter> writer;
    // Through the descriptor, not stdio: each write(2) then ends at an event
    // boundary, so the program's own output, which shares stdout, lands
    // between events rather than inside one (stdio would split a buffer at
    // any byte).
    if (session_options.mode & mode_stream)
        writer = make_writer(*format, fileno(out), {.flush_every_event = options.output.empty() && isatty(fileno(out))});

    // The terminal's Ctrl-C and Ctrl-\ are for the program; SIGTERM and
    // SIGHUP sent to us are passed on to it.
    struct sigaction ignore{};
    ignore.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ignore, &original_interrupt);
    sigaction(SIGQUIT, &ignore, &original_quit);
    sigaction(SIGPIPE, &ignore, &original_pipe);
    pid_t child = start_program(options, session, agent);
    if (child == -2) return 127;  // reported: the program could not be run (the shell's code)
    if (child < 0) {
        fmt::print(stderr, "ukprobe: error: fork: {}\n", std::strerror(errno));
        return 2;
    }
    struct sigaction forward{};
    forward.sa_handler = [](int signal) { forward_signal = signal; };
    sigaction(SIGTERM, &forward, nullptr);
    sigaction(SIGHUP, &forward, nullptr);
    struct sigaction stats{};
    stats.sa_handler = [](int) { stats_requested = 1; };
    sigaction(SIGUSR1, &stats, nullptr);

    Decoder decoder(session, loaded->parsed);
    Totals totals;
    bool write_failed = false;
    std::uint32_t reports_read = 0;
    int status = 0;
    unsigned rounds = 0;
    for (;;) {
        pid_t done = waitpid(child, &status, WNOHANG);
        print_reports(session, &reports_read);
        // Thread names once the program is exec'ed (before, the child is
        // still called ukprobe).
        if (rounds++ % 16 == 0 && session.header().agent_state.load() != 0) decoder.remember_threads(child);
        std::size_t records = drain_all(session, decoder, writer.get(), totals, &write_failed);
        if (writer && !write_failed && records != 0) (void)writer->flush();
        if (done == child) break;
        if (forward_signal != 0) {
            kill(child, forward_signal);
            forward_signal = 0;
        }
        if (stats_requested) {
            stats_requested = 0;
            print_summary(session, totals, options, stderr);
        }
        if (records == 0) {
            timespec pause{0, 5'000'000};
            nanosleep(&pause, nullptr);
        }
    }
    // Children the program forked may still be writing: one last pass.
    drain_all(session, decoder, writer.get(), totals, &write_failed);
    print_reports(session, &reports_read);
    if (writer) {
        if (auto finished = writer->finish(); !finished)
            fmt::print(stderr, "ukprobe: writing events failed: {}\n", finished.error().message);
    }
    auto state = static_cast<AgentState>(session.header().agent_state.load());
    if (state == AgentState::Starting)
        fmt::print(stderr, "ukprobe: warning: the agent never started in '{}' (a static or set-uid program, or "
                           "LD_PRELOAD is ignored): nothing was traced\n", options.command[0]);
    // Aggregations go where events would have gone (-o FILE or stdout).
    print_summary(session, totals, options, out);
    if (out != stdout) std::fclose(out);
    if (totals.undecodable != 0) fmt::print(stderr, "ukprobe: {} records could not be decoded\n", totals.undecodable);
    std::fflush(stdout);
    if (WIFSIGNALED(status)) {
        int signal_number = WTERMSIG(status);
        fmt::print(stderr, "ukprobe: '{}' was killed by signal {} ({})\n", options.command[0], signal_number,
                   strsignal(signal_number));
        // Exit the same way, without a core of our own.
        struct rlimit no_core{0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        signal(signal_number, SIG_DFL);
        sigset_t all;
        sigemptyset(&all);
        sigaddset(&all, signal_number);
        sigprocmask(SIG_UNBLOCK, &all, nullptr);
        raise(signal_number);
        return 128 + signal_number;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

}  // namespace ukp::tracer::cli
