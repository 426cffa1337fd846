// Must not compile: the second eightbyte of this struct is SSE class.
#include <ukprobes/entry_probe.hpp>

struct Sample {
    long id;
    double value;
};
int record(Sample sample);

void attach() {
    ukp::EntryProbe probe{&record, [](Sample) {}};
}
