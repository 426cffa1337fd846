// Must not compile: std::string by value is passed by invisible reference.
#include <string>
#include <ukprobes/entry_probe.hpp>

int count(std::string text);

void attach() {
    ukp::EntryProbe probe{&count, [](std::string) {}};
}
