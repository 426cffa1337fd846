// Must not compile: long double is x87 class.
#include <ukprobes/entry_probe.hpp>

int round_off(long double value);

void attach() {
    ukp::EntryProbe probe{&round_off, [](long double) {}};
}
