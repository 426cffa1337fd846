// Test helpers for the writers: events built from literals, a writer run
// into memory (open_memstream), and a small strict JSON parser so that the
// json and perfetto outputs are checked as JSON, not only as strings.
//
// The parser follows RFC 8259 on its own terms, independently of the
// writer's escaping code: no raw control characters in strings, only the
// defined escapes, \u surrogates paired, raw bytes well-formed UTF-8 (RFC
// 3629), numbers in the JSON grammar, nothing after the top-level value.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "tracer/output.hpp"

namespace ukp::tracer::testing {

inline FieldValue make_value(FieldValue::Kind kind, std::uint64_t number = 0, unsigned size = 8) {
    FieldValue value;
    value.kind = kind;
    value.number = number;
    value.size = size;
    return value;
}
inline FieldValue unsigned_value(std::uint64_t number) { return make_value(FieldValue::Kind::Unsigned, number); }
inline FieldValue signed_value(std::int64_t number) {
    return make_value(FieldValue::Kind::Signed, static_cast<std::uint64_t>(number));
}
inline FieldValue hex_value(std::uint64_t number, unsigned size = 8) {
    return make_value(FieldValue::Kind::Hex, number, size);
}
inline FieldValue char_value(unsigned char byte) { return make_value(FieldValue::Kind::Char, byte, 1); }
inline FieldValue string_value(std::string text) {
    FieldValue value = make_value(FieldValue::Kind::String);
    value.text = std::move(text);
    return value;
}
inline FieldValue symbol_value(std::string text, std::uint64_t address = 0) {
    FieldValue value = make_value(FieldValue::Kind::Symbol, address);
    value.text = std::move(text);
    return value;
}
inline FieldValue fault_value() { return make_value(FieldValue::Kind::Fault); }
inline FieldValue array_value(std::vector<FieldValue> elements) {
    FieldValue value = make_value(FieldValue::Kind::Array);
    value.elements = std::move(elements);
    return value;
}

// "bash" (1234) on CPU 1 hits myprobe at malloc, 12345.678901234 s after boot.
inline DecodedEvent entry_event() {
    DecodedEvent event;
    event.group = "ukprobes";
    event.event = "myprobe";
    event.timestamp_ns = 12345'678901'234;
    event.pid = 1234;
    event.tid = 1234;
    event.cpu = 1;
    event.comm = "bash";
    event.location = "malloc+0x0";
    event.fields = {{"size", hex_value(0x10)}, {"name", string_value("abc")}};
    return event;
}

// The return of a call that began 1.5 us earlier, in a second thread.
inline DecodedEvent return_event() {
    DecodedEvent event;
    event.group = "ukprobes";
    event.event = "myretprobe";
    event.is_return = true;
    event.entry_timestamp_ns = 12345'678901'234;
    event.timestamp_ns = 12345'678902'734;
    event.pid = 1234;
    event.tid = 1240;
    event.cpu = 3;
    event.comm = "worker";
    event.location = "main+0x1c <- malloc";
    event.fields = {{"ret", hex_value(0x55d0c0de0000)}};
    return event;
}

// Everything the writer produced, finish() included.
inline std::string render(Format format, std::span<const DecodedEvent> events, WriterOptions options = {}) {
    char* data = nullptr;
    std::size_t size = 0;
    std::FILE* stream = open_memstream(&data, &size);
    EXPECT_NE(stream, nullptr);
    {
        auto writer = make_writer(format, stream, options);
        for (const auto& event : events) {
            auto written = writer->write(event);
            EXPECT_TRUE(written.has_value()) << written.error().message;
        }
        auto finished = writer->finish();
        EXPECT_TRUE(finished.has_value()) << finished.error().message;
    }
    std::fclose(stream);
    std::string text(data, size);
    std::free(data);
    return text;
}

inline std::string render(Format format, const DecodedEvent& event) {
    return render(format, std::span<const DecodedEvent>(&event, 1));
}

struct Json {
    enum class Type { Null, Bool, Number, String, Array, Object };
    Type type = Type::Null;
    bool boolean = false;
    std::string text;  // Number: the digits as written.  String: decoded UTF-8.
    std::vector<Json> items;
    std::vector<std::pair<std::string, Json>> members;

    [[nodiscard]] const Json* find(std::string_view key) const {
        for (const auto& [name, value] : members) {
            if (name == key) {
                return &value;
            }
        }
        return nullptr;
    }
    [[nodiscard]] const Json& at(std::string_view key) const {
        const Json* value = find(key);
        if (value == nullptr) {
            ADD_FAILURE() << "no key " << key;
            static const Json missing;
            return missing;
        }
        return *value;
    }
};

class JsonParser {
public:
    // The value, or nullopt with error() saying where the text stops being JSON.
    [[nodiscard]] static std::optional<Json> parse(std::string_view text, std::string* error = nullptr) {
        JsonParser parser(text);
        Json value;
        bool ok = parser.value(value, 0);
        parser.skip_space();
        if (ok && parser.at_ != text.size()) {
            ok = parser.fail("text after the value");
        }
        if (!ok) {
            if (error != nullptr) {
                *error = parser.error_;
            }
            return std::nullopt;
        }
        return value;
    }

private:
    explicit JsonParser(std::string_view text) : text_(text) {}

    static constexpr int max_depth = 64;

    bool fail(std::string_view why) {
        error_ = std::string(why) + " at byte " + std::to_string(at_);
        return false;
    }
    [[nodiscard]] bool more() const { return at_ < text_.size(); }
    [[nodiscard]] unsigned char peek() const { return static_cast<unsigned char>(text_[at_]); }
    void skip_space() {
        while (more() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) {
            ++at_;
        }
    }
    bool literal(std::string_view word) {
        if (text_.substr(at_, word.size()) != word) {
            return fail("bad literal");
        }
        at_ += word.size();
        return true;
    }

    bool value(Json& out, int depth) {
        if (depth > max_depth) {
            return fail("too deep");
        }
        skip_space();
        if (!more()) {
            return fail("end of text where a value belongs");
        }
        switch (peek()) {
        case '{': return object(out, depth);
        case '[': return array(out, depth);
        case '"': out.type = Json::Type::String; return string(out.text);
        case 't': out.type = Json::Type::Bool; out.boolean = true; return literal("true");
        case 'f': out.type = Json::Type::Bool; return literal("false");
        case 'n': out.type = Json::Type::Null; return literal("null");
        default: out.type = Json::Type::Number; return number(out.text);
        }
    }

    bool object(Json& out, int depth) {
        out.type = Json::Type::Object;
        ++at_;
        skip_space();
        if (more() && peek() == '}') {
            ++at_;
            return true;
        }
        while (true) {
            skip_space();
            std::string key;
            if (!more() || peek() != '"' || !string(key)) {
                return fail("object key is not a string");
            }
            skip_space();
            if (!more() || peek() != ':') {
                return fail("':' missing");
            }
            ++at_;
            Json member;
            if (!value(member, depth + 1)) {
                return false;
            }
            out.members.emplace_back(std::move(key), std::move(member));
            skip_space();
            if (more() && peek() == ',') {
                ++at_;
                continue;
            }
            if (more() && peek() == '}') {
                ++at_;
                return true;
            }
            return fail("',' or '}' missing");
        }
    }

    bool array(Json& out, int depth) {
        out.type = Json::Type::Array;
        ++at_;
        skip_space();
        if (more() && peek() == ']') {
            ++at_;
            return true;
        }
        while (true) {
            Json item;
            if (!value(item, depth + 1)) {
                return false;
            }
            out.items.push_back(std::move(item));
            skip_space();
            if (more() && peek() == ',') {
                ++at_;
                continue;
            }
            if (more() && peek() == ']') {
                ++at_;
                return true;
            }
            return fail("',' or ']' missing");
        }
    }

    bool number(std::string& out) {
        const std::size_t start = at_;
        const auto digits = [&] {
            const std::size_t first = at_;
            while (more() && peek() >= '0' && peek() <= '9') {
                ++at_;
            }
            return at_ - first;
        };
        if (more() && peek() == '-') {
            ++at_;
        }
        if (more() && peek() == '0') {
            ++at_;
        } else if (digits() == 0) {
            return fail("not a value");
        }
        if (more() && peek() == '.') {
            ++at_;
            if (digits() == 0) {
                return fail("no digits after '.'");
            }
        }
        if (more() && (peek() == 'e' || peek() == 'E')) {
            ++at_;
            if (more() && (peek() == '+' || peek() == '-')) {
                ++at_;
            }
            if (digits() == 0) {
                return fail("no exponent digits");
            }
        }
        out.assign(text_.substr(start, at_ - start));
        return true;
    }

    static void put_utf8(std::string& out, std::uint32_t code_point) {
        if (code_point < 0x80) {
            out += static_cast<char>(code_point);
        } else if (code_point < 0x800) {
            out += static_cast<char>(0xC0 | (code_point >> 6));
            out += static_cast<char>(0x80 | (code_point & 0x3F));
        } else if (code_point < 0x10000) {
            out += static_cast<char>(0xE0 | (code_point >> 12));
            out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code_point & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (code_point >> 18));
            out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code_point & 0x3F));
        }
    }

    bool hex4(std::uint32_t& out) {
        if (at_ + 4 > text_.size()) {
            return fail("short \\u escape");
        }
        out = 0;
        for (int i = 0; i < 4; ++i) {
            const char c = text_[at_++];
            out <<= 4;
            if (c >= '0' && c <= '9') {
                out |= static_cast<std::uint32_t>(c - '0');
            } else if (c >= 'a' && c <= 'f') {
                out |= static_cast<std::uint32_t>(c - 'a' + 10);
            } else if (c >= 'A' && c <= 'F') {
                out |= static_cast<std::uint32_t>(c - 'A' + 10);
            } else {
                return fail("bad hex digit in \\u escape");
            }
        }
        return true;
    }

    // Decodes one raw UTF-8 sequence by its code point's range.
    bool raw_utf8(std::string& out) {
        const unsigned char lead = peek();
        int length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 0;
        if (length == 0 || lead > 0xF4 || at_ + static_cast<std::size_t>(length) > text_.size()) {
            return fail("malformed UTF-8");
        }
        std::uint32_t code_point = lead & (0x7F >> length);
        for (int i = 1; i < length; ++i) {
            const auto byte = static_cast<unsigned char>(text_[at_ + static_cast<std::size_t>(i)]);
            if ((byte & 0xC0) != 0x80) {
                return fail("malformed UTF-8");
            }
            code_point = (code_point << 6) | (byte & 0x3F);
        }
        const std::uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
        if (code_point < smallest[length] || code_point > 0x10FFFF ||
            (code_point >= 0xD800 && code_point <= 0xDFFF)) {
            return fail("overlong, surrogate or out-of-range UTF-8");
        }
        out.append(text_.substr(at_, static_cast<std::size_t>(length)));
        at_ += static_cast<std::size_t>(length);
        return true;
    }

    bool string(std::string& out) {
        ++at_;
        while (true) {
            if (!more()) {
                return fail("unterminated string");
            }
            const unsigned char c = peek();
            if (c == '"') {
                ++at_;
                return true;
            }
            if (c < 0x20) {
                return fail("raw control character in string");
            }
            if (c >= 0x80) {
                if (!raw_utf8(out)) {
                    return false;
                }
                continue;
            }
            ++at_;
            if (c != '\\') {
                out += static_cast<char>(c);
                continue;
            }
            if (!more()) {
                return fail("unterminated escape");
            }
            const char e = text_[at_++];
            switch (e) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                std::uint32_t unit = 0;
                if (!hex4(unit)) {
                    return false;
                }
                if (unit >= 0xDC00 && unit <= 0xDFFF) {
                    return fail("lone low surrogate");
                }
                if (unit >= 0xD800 && unit <= 0xDBFF) {
                    std::uint32_t low = 0;
                    if (text_.substr(at_, 2) != "\\u" || (at_ += 2, !hex4(low)) || low < 0xDC00 || low > 0xDFFF) {
                        return fail("high surrogate without its low half");
                    }
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                }
                put_utf8(out, unit);
                break;
            }
            default: return fail("unknown escape");
            }
        }
    }

    std::string_view text_;
    std::size_t at_ = 0;
    std::string error_;
};

// Parses or fails the test with the parser's reason.
inline Json must_parse(std::string_view text) {
    std::string error;
    auto value = JsonParser::parse(text, &error);
    EXPECT_TRUE(value.has_value()) << error << "\n" << text;
    return value.value_or(Json{});
}

}  // namespace ukp::tracer::testing
