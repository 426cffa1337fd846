// Must not compile: a double argument travels in xmm0, which pt_regs lacks.
#include <ukprobes/entry_probe.hpp>

double scale(double value, long factor);

void attach() {
    ukp::EntryProbe probe{&scale, [](double, long) {}};
}
