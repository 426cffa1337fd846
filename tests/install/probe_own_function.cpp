// Built against an installed ukprobes: probes a function of its own through
// the C++ API and exits 0 only if the handler saw the call.
#include <cstdio>

#include <ukprobes/ukprobes.hpp>

namespace {
unsigned long seen_argument = 0;
}

extern "C" __attribute__((noipa)) int add_one(int value) { return value + 1; }

int main() {
    ukp::Kprobe probe;
    probe.addr = reinterpret_cast<void*>(&add_one);
    probe.pre_handler = [](ukp::Kprobe&, ukp::Regs& regs) {
        seen_argument = regs.di;
        return 0;
    };
    if (auto registered = ukp::register_kprobe(probe); !registered) {
        std::printf("C++: register_kprobe: %s\n", registered.error().message.c_str());
        return 1;
    }
    int result = add_one(41);
    std::printf("C++: add_one(41) = %d, handler saw %lu, hits = %lu\n", result, seen_argument,
                static_cast<unsigned long>(probe.nhit()));
    ukp::unregister_kprobe(probe);
    return result == 42 && seen_argument == 41 && probe.nhit() == 1 ? 0 : 1;
}
