// ukprobes: what a return probe's handlers get for one watched call
// (ukprobes.hpp has the rest of the C++ API).  A header of its own because
// the engine keeps this object as the first part of its own record of the
// call: the handlers get that record's view, which nothing has to copy.
#pragma once

#include <cstdint>

namespace ukp {

struct Kretprobe;

struct KretprobeInstance {
    Kretprobe* rp;                // the probe whose handlers run
    std::uint64_t return_address; // where the function returns to
    std::uint64_t stack_slot;     // where its return address is stored
    void* data;                   // data_size bytes, 16-byte aligned
};

}  // namespace ukp
