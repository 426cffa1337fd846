// One traced event as the reader decoded it from a ring buffer, ready to be
// written out.  The writers (output.hpp) know nothing of rings or probes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace ukp::tracer {

// A fetched value, typed as the definition asked.
struct FieldValue {
    enum class Kind {
        Unsigned,  // printed in decimal
        Signed,    // printed in decimal, with its sign
        Hex,       // printed as 0x..., no padding (the kernel's x8..x64)
        Char,      // printed as the character ('a'), or \xNN when not printable
        String,    // printed quoted: "..." (string, ustring, symstr, \"imm\")
        Symbol,    // printed bare: sym+0x10/0x40 or the address in hex when unknown
        Fault,     // the memory could not be read: the kernel prints (fault)
        Array,     // {v0,v1,...}
    };
    Kind kind = Kind::Unsigned;
    std::uint64_t number = 0;            // Unsigned, Signed (two's complement), Hex, Char
    unsigned size = 8;                   // bytes, for Hex/Char
    std::string text;                    // String, Symbol
    std::vector<FieldValue> elements;    // Array
};

struct Field {
    std::string_view name;
    FieldValue value;
};

struct DecodedEvent {
    std::string_view group;  // "ukprobes" unless the definition named one
    std::string_view event;
    bool is_return = false;
    std::uint64_t timestamp_ns = 0;  // CLOCK_MONOTONIC
    // Return probes: when the call began (CLOCK_MONOTONIC), so every return
    // event is a complete call (perfetto "X" slices, --latency).
    std::uint64_t entry_timestamp_ns = 0;
    int pid = 0;
    int tid = 0;
    int cpu = 0;
    std::string_view comm;       // the thread's name
    // The kernel's "(location)" column.  Entry: "malloc+0x0" or, without a
    // symbol, "0x7f...".  Return: "caller+0x1c <- malloc".
    std::string_view location;
    std::vector<Field> fields;
};

}  // namespace ukp::tracer
