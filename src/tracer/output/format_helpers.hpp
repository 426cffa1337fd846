// Small appenders shared by the writers: raw bytes, integers and JSON
// values into a fmt::memory_buffer, without a format string to parse per
// call (the writers run once per traced event, a million times a second).
//
// JSON facts (RFC 8259): a string may hold any Unicode scalar value except
// '"', '\\' and U+0000..U+001F, which must be escaped; the text must be
// UTF-8.  Numbers are unbounded decimal digit strings, so a u64 is written
// exactly.  Well-formed UTF-8 follows RFC 3629's table: C2..DF one
// continuation; E0 then A0..BF; ED then 80..9F (no surrogates); F0 then
// 90..BF; F4 then 80..8F (nothing above U+10FFFF); continuations 80..BF.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include <fmt/format.h>

#include "tracer/event.hpp"

namespace ukp::tracer::output {

inline void append(fmt::memory_buffer& out, std::string_view text) {
    out.append(text.data(), text.data() + text.size());
}

inline void append_decimal(fmt::memory_buffer& out, std::uint64_t value) {
    const fmt::format_int digits(static_cast<unsigned long long>(value));
    out.append(digits.data(), digits.data() + digits.size());
}

inline void append_decimal(fmt::memory_buffer& out, std::int64_t value) {
    const fmt::format_int digits(static_cast<long long>(value));
    out.append(digits.data(), digits.data() + digits.size());
}

inline void append_decimal(fmt::memory_buffer& out, int value) {
    append_decimal(out, static_cast<std::int64_t>(value));
}

// "0x1f": lower case, no padding, as the kernel's "0x%llx".
void append_hex(fmt::memory_buffer& out, std::uint64_t value);

// The value of a Hex or Char field, cut to its size in bytes: a decoder
// that sign-extended a 1-byte value still prints 0xff, not 0xffffffffffffffff.
[[nodiscard]] std::uint64_t value_of_size(const FieldValue& value);

// Length of the well-formed UTF-8 sequence at the start of `bytes`, or 0
// when the first byte does not start one.  bytes must not be empty.
[[nodiscard]] std::size_t utf8_sequence_length(std::string_view bytes);

// A JSON string, quotes included.  Malformed UTF-8 -> \ufffd per byte.
void append_json_string(fmt::memory_buffer& out, std::string_view text);

// How a faulted fetch appears in JSON.
enum class FaultStyle {
    Null,       // null, and the field's name listed in `faults`
    FaultText,  // the string "(fault)"
};

// {"name":value,...}.  With FaultStyle::Null, each faulted value's name
// ("buf[2]" for an array element) is appended to *faults as a JSON string,
// comma-separated; `faults` may be null for FaultText.
void append_json_args(fmt::memory_buffer& out, std::span<const Field> fields, FaultStyle style,
                      fmt::memory_buffer* faults);

// Microseconds with three decimals, from nanoseconds: 1234567 -> "1234.567".
void append_microseconds(fmt::memory_buffer& out, std::uint64_t nanoseconds);

}  // namespace ukp::tracer::output
