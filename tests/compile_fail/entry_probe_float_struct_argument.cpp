// Must not compile: a small struct of floats travels in xmm registers.
#include <ukprobes/entry_probe.hpp>

struct Vec2 {
    float x, y;
};
int length(Vec2 vector);

void attach() {
    ukp::EntryProbe probe{&length, [](Vec2) {}};
}
