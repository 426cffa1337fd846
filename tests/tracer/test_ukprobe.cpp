// ukprobe end to end: the real command on real programs (tracee.c, bash),
// one behaviour per test.  Paths come from CMake: UKPROBE (the command),
// TRACEE (tracee.c built without optimisation surprises).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../unit/tracer_output/output_test_support.hpp"

namespace {

struct Outcome {
    std::string out, err;
    int status = -1;
    [[nodiscard]] int exit_code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

std::string read_file(const std::string& path) {
    std::ifstream file(path);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
}

std::string temp_path(const char* name) {
    return std::string(::testing::TempDir()) + "ukprobe-" + std::to_string(getpid()) + "-" + name;
}

// Runs argv with stdout and stderr captured into files (no pipe deadlock).
Outcome run(const std::vector<std::string>& argv, const std::vector<std::string>& environment = {}) {
    std::string out_path = temp_path("out"), err_path = temp_path("err");
    pid_t child = fork();
    if (child == 0) {
        int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int in = open("/dev/null", O_RDONLY);
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        for (const auto& setting : environment) putenv(const_cast<char*>(setting.c_str()));
        std::vector<char*> args;
        for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
        args.push_back(nullptr);
        execvp(args[0], args.data());
        _exit(127);
    }
    Outcome outcome;
    waitpid(child, &outcome.status, 0);
    outcome.out = read_file(out_path);
    outcome.err = read_file(err_path);
    unlink(out_path.c_str());
    unlink(err_path.c_str());
    return outcome;
}

std::vector<std::string> ukprobe(std::initializer_list<std::string> args) {
    std::vector<std::string> argv{UKPROBE};
    argv.insert(argv.end(), args);
    return argv;
}

std::vector<std::string> lines_with(const std::string& text, const std::string& needle) {
    std::vector<std::string> found;
    std::istringstream stream(text);
    for (std::string line; std::getline(stream, line);)
        if (line.find(needle) != std::string::npos) found.push_back(line);
    return found;
}

TEST(Ukprobe, TracesEntryArgumentsAndReturnValues) {
    auto result = run(ukprobe({"run", "-e", "p:work work a=%di:s32 s=+0(%si):string", "-e",
                               "r:workret work ret=$retval:s32", "--", TRACEE, "basic"}));
    auto entries = lines_with(result.out, " work: (work+0x0) a=");
    auto returns = lines_with(result.out, " workret: (main+");
    ASSERT_EQ(entries.size(), 5u) << result.out << result.err;
    ASSERT_EQ(returns.size(), 5u) << result.out;
    EXPECT_NE(entries[2].find("a=2 s=\"hello\""), std::string::npos) << entries[2];
    EXPECT_NE(returns[2].find("<- work) ret=7"), std::string::npos) << returns[2];
    // The kernel's trace_pipe line: comm-tid, [cpu], flags, seconds.micros
    std::regex line(R"(^ *tracee-\d+ +\[\d{3}\] \.\.\.\.\. +\d+\.\d{6}: work: \(work\+0x0\) a=0 s="hello"$)");
    EXPECT_TRUE(std::regex_match(entries[0], line)) << entries[0];
}

TEST(Ukprobe, ProgramOutputAndExitStatusAreUnchanged) {
    auto plain = run({TRACEE, "basic"});
    std::string events = temp_path("events");
    auto traced = run(ukprobe({"run", "-q", "-o", events, "-e", "p:work work", "--", TRACEE, "basic"}));
    EXPECT_EQ(traced.exit_code(), 3);
    EXPECT_EQ(plain.exit_code(), 3);
    EXPECT_EQ(traced.out, plain.out);  // stdout is the program's alone when events go to a file
    EXPECT_EQ(lines_with(read_file(events), " work: ").size(), 5u);
    unlink(events.c_str());
}

TEST(Ukprobe, DeathBySignalIsPassedOn) {
    auto traced = run(ukprobe({"run", "-q", "-e", "p:work work", "--", TRACEE, "signal"}));
    ASSERT_TRUE(WIFSIGNALED(traced.status)) << traced.status << traced.err;
    EXPECT_EQ(WTERMSIG(traced.status), SIGUSR2);
    EXPECT_EQ(lines_with(traced.out, " work: ").size(), 1u) << traced.out;
}

TEST(Ukprobe, AProgramThatCannotRunIsReportedAsSuch) {
    auto result = run(ukprobe({"run", "-e", "p:work work", "--", "/nonexistent/program"}));
    EXPECT_EQ(result.exit_code(), 127);
    EXPECT_NE(result.err.find("cannot run '/nonexistent/program': No such file or directory"), std::string::npos)
        << result.err;
    EXPECT_EQ(result.err.find("agent never started"), std::string::npos) << result.err;
}

TEST(Ukprobe, EnvironmentLooksUntouchedToTheProgram) {
    auto unset = run(ukprobe({"run", "-q", "-e", "p:work work", "--", TRACEE, "env"}));
    EXPECT_NE(unset.out.find("LD_PRELOAD=(unset)\n"), std::string::npos) << unset.out;
    EXPECT_NE(unset.out.find("UKPROBE_SESSION_FD=(unset)"), std::string::npos);
    EXPECT_NE(unset.out.find("UKPROBE_ORIGINAL_LD_PRELOAD=(unset)"), std::string::npos);
    // An existing LD_PRELOAD keeps working and is what the program sees.
    auto kept = run(ukprobe({"run", "-q", "-e", "p:work work", "--", TRACEE, "env"}), {"LD_PRELOAD=libz.so.1"});
    EXPECT_NE(kept.out.find("LD_PRELOAD=libz.so.1\n"), std::string::npos) << kept.out << kept.err;
}

TEST(Ukprobe, EveryThreadsHitsAreTracedExactly) {
    constexpr int threads = 4, calls = 2000;
    std::string output = temp_path("threads.json");
    auto result = run(ukprobe({"run", "--format", "json", "-o", output, "-e", "p:work work a=%di:s32", "--", TRACEE,
                               "threads", std::to_string(threads), std::to_string(calls)}));
    auto events = lines_with(read_file(output), "\"event\":\"work\"");
    unlink(output.c_str());
    EXPECT_EQ(events.size(), static_cast<std::size_t>(threads * calls)) << result.err;
    std::map<int, int> per_thread;
    for (const auto& line : events) {
        auto json = ukp::tracer::testing::must_parse(line);
        per_thread[static_cast<int>(std::stod(json.at("tid").text))]++;
    }
    EXPECT_EQ(per_thread.size(), static_cast<std::size_t>(threads));
    for (const auto& [tid, count] : per_thread) EXPECT_EQ(count, calls) << tid;
    EXPECT_EQ(result.err.find("lost"), std::string::npos) << result.err;
}

TEST(Ukprobe, LibraryLoadedWithDlopenIsProbedOnArrival) {
    auto plain = run({TRACEE, "zlib"});
    if (plain.out.find("no libz") != std::string::npos) GTEST_SKIP() << "libz.so.1 is not installed";
    auto result = run(ukprobe({"run", "--count", "-e", "p libz.so.1:*", "--", TRACEE, "zlib"}));
    EXPECT_EQ(result.out.substr(0, result.out.find('\n')), plain.out.substr(0, plain.out.find('\n')));
    EXPECT_NE(result.out.find("@count[p_deflate_0]: "), std::string::npos) << result.out << result.err;
    EXPECT_NE(result.out.find("@count[p_inflate_0]: "), std::string::npos);
    EXPECT_EQ(result.out.find("@count[p_deflate_0]: 0"), std::string::npos);
    EXPECT_NE(result.err.find("functions probed"), std::string::npos) << result.err;
}

// dlclose drops the probes in the library (the engine must not write into
// code that is gone); loaded again, it is probed again.  (Not libz: the
// agent's own libelf keeps it loaded.)
TEST(Ukprobe, LibraryUnloadedAndLoadedAgainIsProbedAgain) {
    const std::string library = UKP_TEST_UNLOAD_LIBRARY;
    const std::string module = library.substr(library.rfind('/') + 1);
    auto result = run(ukprobe({"run", "-e", "p:u " + module + ":unload_target x=%di:s32", "--", TRACEE, "reload",
                               library}));
    EXPECT_EQ(lines_with(result.out, "unload_target(0)=1").size(), 1u) << result.out << result.err;
    EXPECT_EQ(lines_with(result.out, "unload_target(1)=4").size(), 1u) << result.out << result.err;
    EXPECT_EQ(lines_with(result.out, " u: ").size(), 2u) << result.out << result.err;
    EXPECT_EQ(lines_with(result.out, "x=1").size(), 1u) << result.out;
    EXPECT_EQ(result.exit_code(), 0) << result.err;
}

TEST(Ukprobe, BadPointersPrintTheFaultMarker) {
    auto result = run(ukprobe({"run", "-e", "p:str take_string s=+0(%di):string", "-e",
                               "p:pt take_point x=+0(%di):s32 y=+4(%di):s32 label=+0(+8(%di)):string", "--",
                               TRACEE, "pointers"}));
    EXPECT_EQ(lines_with(result.out, " str: (take_string+0x0) s=\"abc\"").size(), 1u) << result.out;
    EXPECT_EQ(lines_with(result.out, " str: (take_string+0x0) s=(fault)").size(), 1u) << result.out;
    EXPECT_EQ(lines_with(result.out, "x=6 y=7 label=\"seven\"").size(), 1u) << result.out;
    EXPECT_NE(result.out.find("97 -1 42"), std::string::npos);  // the program ran as usual
}

TEST(Ukprobe, ReturnProbesSeeArgumentsAsTheyWereAtEntry) {
    auto result = run(ukprobe({"run", "-e", "r:wr work a=$arg1:s32 s=+0($arg2):string ret=$retval:s32", "--", TRACEE,
                               "basic"}));
    auto events = lines_with(result.out, " wr: ");
    ASSERT_EQ(events.size(), 5u) << result.out << result.err;
    EXPECT_NE(events[4].find("a=4 s=\"hello\" ret=9"), std::string::npos) << events[4];
}

TEST(Ukprobe, EveryFetchType) {
    auto result = run(ukprobe({"run", "--string-size", "16", "-e",
                               "p:types take_types u8=+0(%di):u8 s8=+1(%di):s8 u16=+2(%di):u16 s32=+4(%di):s32 "
                               "x64=+8(%di):x64 letter=+16(%di):char bits=+20(%di):b4@4/32 "
                               "text=+0(+24(%di)):string numbers=+32(%di):u32[3] callback=+48(%di):symbol "
                               "name=+48(%di):symstr comm=$comm imm=\\42 word=\\\"hi\"",
                               "--", TRACEE, "types"}));
    auto events = lines_with(result.out, " types: ");
    ASSERT_EQ(events.size(), 1u) << result.out << result.err;
    for (const char* expected : {"u8=200 ", "s8=-5 ", "u16=65535 ", "s32=-123456 ", "x64=0xdeadbeefcafe ",
                                 "letter='Q' ", "bits=10 ", "text=\"xxxxxxxxxxxxxxx\" ", "numbers={1,22,333} ",
                                 "callback=work+0x0/0x", "name=\"work+0x0\" ", "comm=\"tracee\"", "imm=0x2a",
                                 "word=\"hi\""})
        EXPECT_NE(events[0].find(expected), std::string::npos) << expected << " in " << events[0];
}

TEST(Ukprobe, RealProgramObjcopyWithAllOfLibz) {
    // binutils links libz; compressing debug sections drives deflate.
    std::string plain_copy = temp_path("plain.o"), traced_copy = temp_path("traced.o");
    auto plain = run({"objcopy", "--compress-debug-sections=zlib", TRACEE, plain_copy});
    if (plain.exit_code() != 0) GTEST_SKIP() << "objcopy cannot compress here: " << plain.err;
    auto traced = run(ukprobe({"run", "--count", "-e", "p libz.so.1:*", "--", "objcopy",
                               "--compress-debug-sections=zlib", TRACEE, traced_copy}));
    EXPECT_EQ(traced.exit_code(), 0) << traced.err;
    EXPECT_EQ(read_file(traced_copy), read_file(plain_copy));
    std::smatch probed;
    ASSERT_TRUE(std::regex_search(traced.err, probed, std::regex(R"((\d+) of (\d+) functions probed)"))) << traced.err;
    EXPECT_GT(std::stoul(probed[1]), 50u);
    EXPECT_NE(traced.out.find("@count[p_deflate_0]: "), std::string::npos) << traced.out;
    EXPECT_EQ(traced.out.find("@count[p_deflate_0]: 0\n"), std::string::npos) << traced.out;
    unlink(plain_copy.c_str());
    unlink(traced_copy.c_str());
}

TEST(Ukprobe, FiltersDropWhatTheyReject) {
    auto result = run(ukprobe({"run", "-e", "p:work work a=%di:s32 if a >= 3", "--", TRACEE, "basic"}));
    auto events = lines_with(result.out, " work: ");
    ASSERT_EQ(events.size(), 2u) << result.out << result.err;
    EXPECT_NE(events[0].find("a=3"), std::string::npos);
    EXPECT_NE(events[1].find("a=4"), std::string::npos);
}

TEST(Ukprobe, CountsAndLatencyHistograms) {
    auto counted = run(ukprobe({"run", "--count", "-e", "p:work work", "--", TRACEE, "basic"}));
    EXPECT_NE(counted.out.find("@count[work]: 5"), std::string::npos) << counted.out << counted.err;
    auto latency = run(ukprobe({"run", "--latency", "-e", "r:workret work", "--", TRACEE, "basic"}));
    EXPECT_NE(latency.out.find("@latency_ns[workret]:"), std::string::npos) << latency.out << latency.err;
    EXPECT_NE(latency.out.find("count 5,"), std::string::npos) << latency.out;
}

TEST(Ukprobe, PerfettoTraceHasOneSlicePerCall) {
    std::string trace = temp_path("trace.json");
    auto result = run(ukprobe({"run", "-q", "--format", "perfetto", "-o", trace, "-e", "p:work work a=%di:s32", "-e",
                               "r:workret work ret=$retval:s32", "--", TRACEE, "threads", "2", "10"}));
    ASSERT_EQ(result.exit_code(), 0) << result.err;
    auto json = ukp::tracer::testing::must_parse(read_file(trace));
    int slices = 0, instants = 0;
    std::set<double> tids;
    for (const auto& event : json.at("traceEvents").items) {
        if (event.at("ph").text == "X" && event.at("name").text == "workret") {
            ++slices;
            EXPECT_GE(std::stod(event.at("dur").text), 0.0);
            tids.insert(std::stod(event.at("tid").text));
        }
        if (event.at("ph").text == "i" && event.at("name").text == "work") ++instants;
    }
    EXPECT_EQ(slices, 20);
    EXPECT_EQ(instants, 20);
    EXPECT_EQ(tids.size(), 2u);
    unlink(trace.c_str());
}

TEST(Ukprobe, ForkedChildrenAreTracedToo) {
    auto result = run(ukprobe({"run", "--format", "json", "-e", "p:work work a=%di:s32", "--", TRACEE, "fork"}));
    auto events = lines_with(result.out, "\"event\":\"work\"");
    ASSERT_EQ(events.size(), 3u) << result.out << result.err;
    std::set<double> pids;
    for (const auto& line : events) pids.insert(std::stod(ukp::tracer::testing::must_parse(line).at("pid").text));
    EXPECT_EQ(pids.size(), 2u);
}

TEST(Ukprobe, RealProgramBashWithMallocProbed) {
    std::vector<std::string> script{"bash", "-c", "for i in 1 2 3; do echo line $i; done; x=$(echo sub); echo $x"};
    auto plain = run(script);
    std::vector<std::string> argv = ukprobe({"run", "--count", "-e", "p libc.so.6:malloc size=%di:u64", "-e",
                                             "r libc.so.6:malloc ret=$retval", "--"});
    argv.insert(argv.end(), script.begin(), script.end());
    auto traced = run(argv);
    EXPECT_EQ(traced.exit_code(), plain.exit_code());
    // The program's lines come first, the counts after it exits.
    EXPECT_EQ(traced.out.substr(0, plain.out.size()), plain.out);
    std::smatch count;
    ASSERT_TRUE(std::regex_search(traced.out, count, std::regex(R"(@count\[p_libc_so_6_malloc_0\]: (\d+))")))
        << traced.out << traced.err;
    EXPECT_GT(std::stoul(count[1]), 50u);
}

TEST(UkprobeCheck, ReportsTheKernelsMessageWithACaret) {
    auto result = run(ukprobe({"check", "-e", "p:myprobe malloc size=%rdz"}));
    EXPECT_EQ(result.exit_code(), 1);
    EXPECT_NE(result.err.find("ukprobe: error: "), std::string::npos) << result.err;
    EXPECT_NE(result.err.find("  p:myprobe malloc size=%rdz\n"), std::string::npos) << result.err;
    std::string caret_line = result.err.substr(result.err.rfind("\n", result.err.size() - 2) + 1);
    EXPECT_EQ(caret_line.find('^'), std::string("  p:myprobe malloc size=").size()) << result.err;
}

TEST(UkprobeCheck, ChecksSymbolsAgainstTheBinaryAndItsLibraries) {
    auto good = run(ukprobe({"check", "-x", TRACEE, "-e", "p work", "-e", "p libc.so.6:malloc", "-e",
                             "p libc.so.6:str*"}));
    EXPECT_EQ(good.exit_code(), 0) << good.err;
    auto bad = run(ukprobe({"check", "-x", TRACEE, "-e", "p work", "-e", "p no_such_function"}));
    EXPECT_EQ(bad.exit_code(), 1);
    EXPECT_NE(bad.err.find("no_such_function"), std::string::npos) << bad.err;
}

TEST(UkprobeList, FunctionsOfABinaryAndItsLibraries) {
    auto result = run(ukprobe({"list", TRACEE, "take_*"}));
    EXPECT_EQ(result.exit_code(), 0) << result.err;
    EXPECT_NE(result.out.find("tracee:take_point\n"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("tracee:take_string\n"), std::string::npos);
    auto libc = run(ukprobe({"list", TRACEE, "malloc"}));
    EXPECT_NE(libc.out.find("libc.so.6:malloc\n"), std::string::npos) << libc.out;
}

TEST(UkprobeList, ProbesOfARunningTraceWithTheirKind) {
    // tracee "wait" blocks reading stdin: give it a pipe we hold open.
    int input[2];
    ASSERT_EQ(pipe(input), 0);
    std::string out_path = temp_path("wait-out");
    pid_t tracer = fork();
    if (tracer == 0) {
        dup2(input[0], 0);
        close(input[1]);
        int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(out, 1);
        execl(UKPROBE, UKPROBE, "run", "-q", "-e", "p:work work", "--", TRACEE, "wait", nullptr);
        _exit(127);
    }
    close(input[0]);
    int traced_pid = 0;
    for (int i = 0; i < 200 && traced_pid == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (read_file(out_path).find("ready") == std::string::npos) continue;
        std::ifstream children("/proc/" + std::to_string(tracer) + "/task/" + std::to_string(tracer) + "/children");
        children >> traced_pid;
    }
    ASSERT_GT(traced_pid, 0);
    auto listed = run(ukprobe({"list", "--probes", "-p", std::to_string(traced_pid)}));
    close(input[1]);
    int status = 0;
    waitpid(tracer, &status, 0);
    EXPECT_NE(listed.out.find("p ukprobes/work  work+0x0 [tracee]"), std::string::npos) << listed.out << listed.err;
    EXPECT_TRUE(listed.out.find("optimized") != std::string::npos || listed.out.find("not optimized") != std::string::npos)
        << listed.out;
    unlink(out_path.c_str());
}

}  // namespace
