// Appenders shared by the writers; see format_helpers.hpp for the JSON and
// UTF-8 facts they follow.
#include "tracer/output/format_helpers.hpp"

#include <array>

namespace ukp::tracer::output {

namespace {

constexpr std::string_view hex_digits = "0123456789abcdef";

bool is_continuation(unsigned char byte) { return (byte & 0xC0) == 0x80; }

// "\u00XX" for a byte: JSON's only way to name a control character, and our
// way to name a lone byte of a char value.
void append_unicode_escape(fmt::memory_buffer& out, unsigned char byte) {
    const std::array<char, 6> escape = {'\\', 'u', '0', '0', hex_digits[byte >> 4], hex_digits[byte & 0xF]};
    out.append(escape.data(), escape.data() + escape.size());
}

// A byte that cannot appear raw in a JSON string, or 0 when it can
// (ASCII from 0x20 but '"' and '\\').  The short forms are RFC 8259's.
char short_escape(unsigned char byte) {
    switch (byte) {
    case '"': return '"';
    case '\\': return '\\';
    case '\b': return 'b';
    case '\f': return 'f';
    case '\n': return 'n';
    case '\r': return 'r';
    case '\t': return 't';
    default: return 0;
    }
}

bool needs_escape_or_check(unsigned char byte) { return byte < 0x20 || byte == '"' || byte == '\\' || byte >= 0x80; }

// One byte as a JSON string.  A byte from 0x80 is not UTF-8 on its own;
// name its value (\u00XX) rather than replace it.
void append_json_char(fmt::memory_buffer& out, unsigned char byte) {
    out.push_back('"');
    if (const char letter = short_escape(byte); letter != 0) {
        out.push_back('\\');
        out.push_back(letter);
    } else if (byte < 0x20 || byte >= 0x80) {
        append_unicode_escape(out, byte);
    } else {
        out.push_back(static_cast<char>(byte));
    }
    out.push_back('"');
}

void append_json_value(fmt::memory_buffer& out, const FieldValue& value, FaultStyle style,
                       fmt::memory_buffer* faults, std::string_view name, long element);

void note_fault(fmt::memory_buffer* faults, std::string_view name, long element) {
    if (faults == nullptr) {
        return;
    }
    if (faults->size() != 0) {
        faults->push_back(',');
    }
    if (element < 0) {
        append_json_string(*faults, name);
        return;
    }
    fmt::memory_buffer indexed;
    append(indexed, name);
    indexed.push_back('[');
    append_decimal(indexed, static_cast<std::int64_t>(element));
    indexed.push_back(']');
    append_json_string(*faults, std::string_view(indexed.data(), indexed.size()));
}

void append_json_value(fmt::memory_buffer& out, const FieldValue& value, FaultStyle style,
                       fmt::memory_buffer* faults, std::string_view name, long element) {
    using Kind = FieldValue::Kind;
    switch (value.kind) {
    case Kind::Unsigned:
        append_decimal(out, value.number);
        return;
    case Kind::Signed:
        append_decimal(out, static_cast<std::int64_t>(value.number));
        return;
    case Kind::Hex:
        out.push_back('"');
        append_hex(out, value_of_size(value));
        out.push_back('"');
        return;
    case Kind::Char:
        append_json_char(out, static_cast<unsigned char>(value.number));
        return;
    case Kind::String:
        append_json_string(out, value.text);
        return;
    case Kind::Symbol:
        if (value.text.empty()) {
            out.push_back('"');
            append_hex(out, value.number);
            out.push_back('"');
        } else {
            append_json_string(out, value.text);
        }
        return;
    case Kind::Fault:
        if (style == FaultStyle::Null) {
            append(out, "null");
            note_fault(faults, name, element);
        } else {
            append(out, "\"(fault)\"");
        }
        return;
    case Kind::Array: {
        out.push_back('[');
        long index = 0;
        for (const auto& item : value.elements) {
            if (index != 0) {
                out.push_back(',');
            }
            // Nested arrays report the outermost index: the kernel's arrays are flat.
            append_json_value(out, item, style, faults, name, element >= 0 ? element : index);
            ++index;
        }
        out.push_back(']');
        return;
    }
    }
    // A Kind added to event.hpp without a case here: still valid JSON.
    append(out, "null");
}

}  // namespace

void append_hex(fmt::memory_buffer& out, std::uint64_t value) {
    std::array<char, 2 + 16> text{};
    std::size_t start = text.size();
    do {
        text[--start] = hex_digits[value & 0xF];
        value >>= 4;
    } while (value != 0);
    text[--start] = 'x';
    text[--start] = '0';
    out.append(text.data() + start, text.data() + text.size());
}

std::uint64_t value_of_size(const FieldValue& value) {
    if (value.size == 0 || value.size >= 8) {
        return value.number;
    }
    return value.number & ((std::uint64_t{1} << (value.size * 8)) - 1);
}

std::size_t utf8_sequence_length(std::string_view bytes) {
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
    const unsigned char lead = byte(0);
    if (lead < 0x80) {
        return 1;
    }
    std::size_t length = 0;
    unsigned char second_low = 0x80;
    unsigned char second_high = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3;
        if (lead == 0xE0) {
            second_low = 0xA0;  // shorter forms are overlong
        } else if (lead == 0xED) {
            second_high = 0x9F;  // ED A0..BF encodes the UTF-16 surrogates
        }
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4;
        if (lead == 0xF0) {
            second_low = 0x90;  // overlong
        } else if (lead == 0xF4) {
            second_high = 0x8F;  // above U+10FFFF
        }
    } else {
        return 0;  // continuation byte, C0/C1 (overlong ASCII), F5..FF
    }
    if (bytes.size() < length) {
        return 0;
    }
    if (byte(1) < second_low || byte(1) > second_high) {
        return 0;
    }
    for (std::size_t i = 2; i < length; ++i) {
        if (!is_continuation(byte(i))) {
            return 0;
        }
    }
    return length;
}

void append_json_string(fmt::memory_buffer& out, std::string_view text) {
    out.push_back('"');
    std::size_t run_start = 0;
    std::size_t i = 0;
    const auto flush_run = [&](std::size_t end) { out.append(text.data() + run_start, text.data() + end); };
    while (i < text.size()) {
        const auto byte = static_cast<unsigned char>(text[i]);
        if (!needs_escape_or_check(byte)) {
            ++i;
            continue;
        }
        if (byte >= 0x80) {
            const std::size_t length = utf8_sequence_length(text.substr(i));
            if (length != 0) {
                i += length;  // well-formed: stays in the run, copied as is
                continue;
            }
            flush_run(i);
            append(out, "\\ufffd");
            run_start = ++i;
            continue;
        }
        flush_run(i);
        if (const char letter = short_escape(byte); letter != 0) {
            out.push_back('\\');
            out.push_back(letter);
        } else {
            append_unicode_escape(out, byte);
        }
        run_start = ++i;
    }
    flush_run(text.size());
    out.push_back('"');
}

void append_json_args(fmt::memory_buffer& out, std::span<const Field> fields, FaultStyle style,
                      fmt::memory_buffer* faults) {
    out.push_back('{');
    bool first = true;
    for (const auto& field : fields) {
        if (!first) {
            out.push_back(',');
        }
        first = false;
        append_json_string(out, field.name);
        out.push_back(':');
        append_json_value(out, field.value, style, faults, field.name, -1);
    }
    out.push_back('}');
}

void append_microseconds(fmt::memory_buffer& out, std::uint64_t nanoseconds) {
    append_decimal(out, nanoseconds / 1000);
    const auto fraction = static_cast<unsigned>(nanoseconds % 1000);
    const std::array<char, 4> decimals = {'.', static_cast<char>('0' + fraction / 100),
                                          static_cast<char>('0' + fraction / 10 % 10),
                                          static_cast<char>('0' + fraction % 10)};
    out.append(decimals.data(), decimals.data() + decimals.size());
}

}  // namespace ukp::tracer::output
