// ukprobe: the command line.  Subcommands live in run.cpp and inspect.cpp.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <string_view>

#include "tracer/cli/commands.hpp"

int main(int argc, char** argv) {
    using namespace ukp::tracer::cli;
    CLI::App app{"ukprobe: kprobe_events-style tracing of user-space programs"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "ukprobe 0.1.0");

    RunOptions run_options;
    auto* run_command = app.add_subcommand("run", "run a program with probes armed before main, print its events");
    run_command->add_option("-e,--event", run_options.definitions, "a probe definition (kprobe_events syntax)");
    run_command->add_option("-f,--file", run_options.files, "a file of definitions, one per line")->check(CLI::ExistingFile);
    run_command->add_option("-o,--output", run_options.output, "write events to this file (default: stdout)");
    run_command->add_option("--format", run_options.format, "text (trace_pipe lines), json (JSON lines) or perfetto")
        ->check(CLI::IsMember({"text", "json", "perfetto"}));
    run_command->add_flag("--count", run_options.count, "count hits per event instead of streaming them");
    run_command->add_option("--hist", run_options.hist_field, "log2 histogram of this field per event, instead of streaming");
    run_command->add_flag("--latency", run_options.latency, "log2 histogram of call durations per return probe, instead of streaming");
    run_command->add_option("--buffer-size", run_options.buffer_kib, "ring buffer per thread, in KiB (a power of two)")
        ->check(CLI::Range(4u, 1u << 20));
    run_command->add_option("--string-size", run_options.string_size, "bytes kept of each fetched string")
        ->check(CLI::Range(2u, 65535u));
    run_command->add_flag("-q,--quiet", run_options.quiet, "no summary at exit");
    run_command->add_option("command", run_options.command, "the program and its arguments (after --)");

    CheckOptions check_options;
    auto* check_command = app.add_subcommand("check", "validate definitions (against a binary and its libraries with -x)");
    check_command->add_option("-e,--event", check_options.definitions, "a probe definition");
    check_command->add_option("-f,--file", check_options.files, "a file of definitions")->check(CLI::ExistingFile);
    check_command->add_option("-x,--executable", check_options.binary, "the program the definitions are for")
        ->check(CLI::ExistingFile);

    ListOptions list_options;
    auto* list_command = app.add_subcommand("list", "probeable functions of a binary and its libraries, or of a process");
    list_command->add_option("target", list_options.target, "a binary (default with -p: the process)");
    list_command->add_option("pattern", list_options.pattern, "a shell glob over function names (default *)");
    list_command->add_option("-p,--pid", list_options.pid, "a running process");
    list_command->add_flag("--probes", list_options.probes, "the probes of the ukprobe trace running in -p PID");

    // Everything after the first "--" is the program's, taken before CLI11
    // sees it: its own options ("bash -c ...") must never be ours.
    int ours = argc;
    for (int i = 1; i < argc; ++i)
        if (std::string_view(argv[i]) == "--") {
            ours = i;
            break;
        }
    try {
        app.parse(ours, argv);
    } catch (const CLI::ParseError& error) {
        return app.exit(error);
    }
    if (*run_command) {
        for (int i = ours + 1; i < argc; ++i) run_options.command.emplace_back(argv[i]);
        if (run_options.command.empty()) {
            fmt::print(stderr, "ukprobe: error: no program to run: ukprobe run -e DEF -- PROGRAM [ARGS]\n");
            return 2;
        }
        return run(run_options);
    }
    if (*check_command) return check(check_options);
    return list(list_options);
}
