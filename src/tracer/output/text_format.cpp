// The kernel's trace_pipe line for one probe event.  The layout and the
// kernel code it follows are described in tracer/output.hpp; in short:
//
//   trace_print_context:  "%16s-%-7d " comm, tid; "[%03d] " cpu;
//                         trace_print_lat_fmt "....." (nothing to report in
//                         user space); trace_print_time " %5lu.%06lu"; ": "
//   print_kprobe_event:   "%s: (" event; the location; ")"
//   print_probe_args:     " %s=" name, then the value by its type; arrays
//                         as '{' elements joined by ',' '}'
#include <array>

#include "tracer/output/format_helpers.hpp"
#include "tracer/output/formatters.hpp"

namespace ukp::tracer::output {

namespace {

constexpr std::size_t comm_width = 16;  // "%16s"
constexpr std::size_t tid_width = 7;    // "%-7d"
constexpr std::uint64_t nanoseconds_per_microsecond = 1000;
constexpr std::uint64_t microseconds_per_second = 1000000;

bool is_control(unsigned char byte) { return byte < 0x20 || byte == 0x7F; }

void append_byte_escape(fmt::memory_buffer& out, unsigned char byte) {
    constexpr std::string_view digits = "0123456789abcdef";
    const std::array<char, 4> escape = {'\\', 'x', digits[byte >> 4], digits[byte & 0xF]};
    out.append(escape.data(), escape.data() + escape.size());
}

// Bytes as they are, but control bytes as \xNN: a newline in a traced
// string must not start a new event line.
void append_line_safe(fmt::memory_buffer& out, std::string_view text) {
    std::size_t run_start = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto byte = static_cast<unsigned char>(text[i]);
        if (is_control(byte)) {
            out.append(text.data() + run_start, text.data() + i);
            append_byte_escape(out, byte);
            run_start = i + 1;
        }
    }
    out.append(text.data() + run_start, text.data() + text.size());
}

std::size_t line_safe_length(std::string_view text) {
    std::size_t length = text.size();
    for (const char c : text) {
        if (is_control(static_cast<unsigned char>(c))) {
            length += 3;  // one byte becomes four: \xNN
        }
    }
    return length;
}

void append_spaces(fmt::memory_buffer& out, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
        out.push_back(' ');
    }
}

// Zero-padded to `width` digits: "%06lu", "%03d" for the values we pass.
void append_zero_padded(fmt::memory_buffer& out, std::uint64_t value, std::size_t width) {
    const fmt::format_int digits(static_cast<unsigned long long>(value));
    for (std::size_t i = digits.size(); i < width; ++i) {
        out.push_back('0');
    }
    out.append(digits.data(), digits.data() + digits.size());
}

void append_text_value(fmt::memory_buffer& out, const FieldValue& value) {
    using Kind = FieldValue::Kind;
    switch (value.kind) {
    case Kind::Unsigned:
        append_decimal(out, value.number);
        return;
    case Kind::Signed:
        append_decimal(out, static_cast<std::int64_t>(value.number));
        return;
    case Kind::Hex:
        append_hex(out, value_of_size(value));
        return;
    case Kind::Char: {
        const auto byte = static_cast<unsigned char>(value.number);
        out.push_back('\'');
        if (byte >= 0x20 && byte < 0x7F) {
            out.push_back(static_cast<char>(byte));
        } else {
            append_byte_escape(out, byte);
        }
        out.push_back('\'');
        return;
    }
    case Kind::String:
        out.push_back('"');
        append_line_safe(out, value.text);
        out.push_back('"');
        return;
    case Kind::Symbol:
        if (value.text.empty()) {
            append_hex(out, value.number);
        } else {
            append_line_safe(out, value.text);
        }
        return;
    case Kind::Fault:
        append(out, "(fault)");
        return;
    case Kind::Array: {
        out.push_back('{');
        bool first = true;
        for (const auto& element : value.elements) {
            if (!first) {
                out.push_back(',');
            }
            first = false;
            append_text_value(out, element);
        }
        out.push_back('}');
        return;
    }
    }
    append(out, "(unknown)");  // a Kind added to event.hpp without a case here
}

}  // namespace

void TextFormatter::event(fmt::memory_buffer& out, const DecodedEvent& event) {
    const std::size_t comm_length = line_safe_length(event.comm);
    if (comm_length < comm_width) {
        append_spaces(out, comm_width - comm_length);
    }
    append_line_safe(out, event.comm);
    out.push_back('-');
    const fmt::format_int tid(event.tid);
    out.append(tid.data(), tid.data() + tid.size());
    if (tid.size() < tid_width) {
        append_spaces(out, tid_width - tid.size());
    }
    append(out, " [");
    if (event.cpu >= 0) {
        append_zero_padded(out, static_cast<std::uint64_t>(event.cpu), 3);
    } else {
        append_decimal(out, event.cpu);
    }
    append(out, "] ..... ");

    // ns2usecs: round to the nearest microsecond, written without the
    // kernel's "+ 500" so that timestamps near UINT64_MAX cannot wrap.
    std::uint64_t microseconds = event.timestamp_ns / nanoseconds_per_microsecond;
    if (event.timestamp_ns % nanoseconds_per_microsecond >= nanoseconds_per_microsecond / 2) {
        ++microseconds;
    }
    const fmt::format_int seconds(static_cast<unsigned long long>(microseconds / microseconds_per_second));
    if (seconds.size() < 5) {
        append_spaces(out, 5 - seconds.size());  // "%5lu"
    }
    out.append(seconds.data(), seconds.data() + seconds.size());
    out.push_back('.');
    append_zero_padded(out, microseconds % microseconds_per_second, 6);
    append(out, ": ");

    append_line_safe(out, event.event);
    append(out, ": (");
    append_line_safe(out, event.location);
    out.push_back(')');
    for (const auto& field : event.fields) {
        out.push_back(' ');
        append_line_safe(out, field.name);
        out.push_back('=');
        append_text_value(out, field.value);
    }
    out.push_back('\n');
}

}  // namespace ukp::tracer::output
