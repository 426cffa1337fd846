// Must not compile: a variadic function's extra arguments have no types.
#include <ukprobes/entry_probe.hpp>

void attach() {
    ukp::EntryProbe<int(const char*, ...)> probe{"libc.so.6:printf", [](const char*) {}};
}
