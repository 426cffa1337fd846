// Must not compile: a union passed by value.
#include <ukprobes/entry_probe.hpp>

union Word {
    long integer;
    double real;
};
int store(Word word);

void attach() {
    ukp::EntryProbe probe{&store, [](Word) {}};
}
