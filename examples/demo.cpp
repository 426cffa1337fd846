// ukp_demo: a tour of ukprobes in one process.
//
// It probes three things and shows what each probe saw:
//   1. parse_port(), a function of this program: a pre-handler reads its
//      arguments from the registers (System V ABI: rdi, rsi), a post-handler
//      runs after the first instruction.
//   2. write() in libc.so.6, named by "module:symbol".
//   3. reserve_buffer(), whose pre-handler injects a failure: it returns
//      -ENOSPC to the caller without running the function body.
// then prints the probe list and shows the functions run unprobed once the
// probes are gone.
//
// Handlers run inside the SIGTRAP handler of the thread that hit the probe,
// where printf is not async-signal-safe.  So the handlers only record what
// they see into the `seen` variables below, and main() prints afterwards.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <string>
#include <cstring>
#include <unistd.h>

#include "ukprobes/ukprobes.hpp"

// noipa: the compiler must neither inline these functions nor propagate
// facts about them into their callers, or the probes would never be hit
// (or the injected return value ignored).  extern "C" keeps their names
// readable in the probe list.
extern "C" __attribute__((noipa)) int parse_port(const char* text, std::size_t length) {
    int port = 0;
    for (std::size_t i = 0; i < length; ++i) {
        if (text[i] < '0' || text[i] > '9') return -EINVAL;
        port = port * 10 + (text[i] - '0');
    }
    return port <= 65535 ? port : -ERANGE;
}

extern "C" __attribute__((noipa)) int reserve_buffer(std::size_t bytes) {
    static char arena[4096];
    static std::size_t used = 0;
    if (used + bytes > sizeof arena) return -ENOSPC;
    used += bytes;
    return 0;
}

namespace {

struct Seen {
    unsigned long text = 0, length = 0, post_ip = 0;
    unsigned long write_fd = 0, write_count = 0;
    unsigned long injected_return_to = 0;
    int pre_calls = 0, post_calls = 0, write_calls = 0;
} seen;

void write_line(const char* text) {
    // Straight to write(2), so that the libc probe sees exactly this call.
    ssize_t ignored = ::write(STDOUT_FILENO, text, std::strlen(text));
    (void)ignored;
}

void show_parse(const char* text) {
    int port = parse_port(text, std::strlen(text));
    std::printf("  parse_port(\"%s\") = %d\n", text, port);
}

}  // namespace

int main() {
    std::setvbuf(stdout, nullptr, _IONBF, 0);  // no buffered bytes to confuse the write() probe

    std::printf("== 1. A probe on parse_port(), a function of this program\n");
    ukp::Kprobe parse_probe{
        .addr = reinterpret_cast<void*>(&parse_port),
        .pre_handler = [](ukp::Kprobe&, ukp::Regs& regs) {
            // At the first instruction the arguments are still in rdi, rsi.
            seen.text = regs.di;
            seen.length = regs.si;
            ++seen.pre_calls;
            return 0;  // 0: go on and run the probed instruction
        },
        .post_handler = [](ukp::Kprobe&, ukp::Regs& regs, unsigned long) {
            seen.post_ip = regs.ip;  // the instruction after the probed one
            ++seen.post_calls;
        },
    };
    if (auto registered = ukp::register_kprobe(parse_probe); !registered) {
        std::fprintf(stderr, "register parse_port: %s\n", registered.error().message.c_str());
        return 1;
    }
    static const char port_text[] = "8080";
    show_parse(port_text);
    std::printf("  pre-handler saw  rdi = %#lx (\"%s\" is at %p), rsi = %lu\n", seen.text,
                reinterpret_cast<const char*>(seen.text), static_cast<const void*>(port_text), seen.length);
    std::printf("  post-handler saw rip = %#lx = parse_port+%#lx, after the first instruction\n", seen.post_ip,
                seen.post_ip - reinterpret_cast<std::uintptr_t>(&parse_port));
    std::printf("  handlers ran %d (pre) and %d (post) times; nhit() = %lu\n\n", seen.pre_calls, seen.post_calls,
                static_cast<unsigned long>(parse_probe.nhit()));

    std::printf("== 2. A probe on libc.so.6:write\n");
    ukp::Kprobe write_probe{
        .symbol_name = "libc.so.6:write",
        .pre_handler = [](ukp::Kprobe&, ukp::Regs& regs) {
            seen.write_fd = regs.di;     // write(int fd, const void* buffer, size_t count)
            seen.write_count = regs.dx;
            ++seen.write_calls;
            return 0;
        },
    };
    if (auto registered = ukp::register_kprobe(write_probe); !registered) {
        std::fprintf(stderr, "register libc.so.6:write: %s\n", registered.error().message.c_str());
        return 1;
    }
    static const char greeting[] = "  hello through a probed write()\n";
    write_line(greeting);
    // Read the record before the printf below calls write() again.
    Seen first_write = seen;
    std::printf("  the handler saw fd = %lu, count = %lu (the line above is %zu bytes)\n", first_write.write_fd,
                first_write.write_count, std::strlen(greeting));
    std::printf("  probe resolved to %p\n\n", write_probe.address());

    std::printf("== 3. Fault injection: reserve_buffer() fails without running\n");
    std::printf("  unprobed: reserve_buffer(64) = %d\n", reserve_buffer(64));
    ukp::Kprobe inject_probe{
        .addr = reinterpret_cast<void*>(&reserve_buffer),
        .pre_handler = [](ukp::Kprobe&, ukp::Regs& regs) {
            // We are at the function's first instruction, so the return
            // address is on top of the stack.  Emulate `ret` with an error in
            // eax, and return 1: "regs.ip is set, skip the probed instruction".
            auto return_address = *reinterpret_cast<const std::uint64_t*>(regs.sp);
            seen.injected_return_to = return_address;
            regs.ax = static_cast<unsigned long>(-ENOSPC);
            regs.ip = return_address;
            regs.sp += sizeof(std::uint64_t);
            return 1;
        },
    };
    if (auto registered = ukp::register_kprobe(inject_probe); !registered) {
        std::fprintf(stderr, "register reserve_buffer: %s\n", registered.error().message.c_str());
        return 1;
    }
    int injected = reserve_buffer(64);
    std::printf("  probed:   reserve_buffer(64) = %d (%s), returned straight to %#lx\n\n", injected,
                injected < 0 ? std::strerror(-injected) : "success", seen.injected_return_to);

    std::printf("== 4. ukp::format_probe_list(), like /sys/kernel/debug/kprobes/list\n");
    std::printf("%s\n", ukp::format_probe_list().c_str());

    std::printf("== 5. After unregistration the functions run unprobed\n");
    ukp::unregister_kprobe(parse_probe);
    ukp::unregister_kprobe(write_probe);
    ukp::unregister_kprobe(inject_probe);
    int pre_calls_before = seen.pre_calls;
    show_parse("443");
    std::printf("  parse_port pre-handler calls: %d before, %d after\n", pre_calls_before, seen.pre_calls);
    std::printf("  reserve_buffer(64) = %d (real body ran)\n", reserve_buffer(64));
    std::printf("  final counters: parse_port hits = %lu, write hits = %lu, reserve_buffer hits = %lu\n",
                static_cast<unsigned long>(parse_probe.nhit()), static_cast<unsigned long>(write_probe.nhit()),
                static_cast<unsigned long>(inject_probe.nhit()));
    std::printf("  probes listed now: %zu\n", ukp::list_probes().size());

    std::printf("\n== 6. What a hit costs: the same probe, optimized and as int3\n");
    constexpr int calls = 20000;
    auto time_calls = [&] {
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; ++i) (void)parse_port("8080", 4);
        return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() / calls;
    };
    double bare = time_calls();
    for (unsigned flags : {0u, ukp::flag_no_optimize}) {
        ukp::Kprobe counter{.addr = reinterpret_cast<void*>(&parse_port),
                            .pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; },
                            .flags = flags};
        if (auto registered = ukp::register_kprobe(counter); !registered) return 1;
        std::string kind = ukp::list_probes().at(0).kind;
        double probed = time_calls();
        std::printf("  %-10s probe: %8.1f ns per call (unprobed call: %.1f ns), %lu hits\n", kind.c_str(), probed,
                    bare, static_cast<unsigned long>(counter.nhit()));
        ukp::unregister_kprobe(counter);
    }
    return 0;
}
