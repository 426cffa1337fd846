// Characters and numbers as the kernel's probe parser reads them.
//
// The kernel reads every number in a definition with kstrto*(): base 0
// means "0x"/"0X" then hex digits, a leading "0" then octal, otherwise
// decimal; the whole string must be consumed; a value that does not fit is
// -ERANGE.  Only "0x" followed by a hex digit switches to hex: "0x" alone is
// the octal "0" followed by junk.  kstrtoull skips one leading '+';
// kstrtoll additionally takes one leading '-'.  We do not accept the
// trailing newline kstrto*() tolerates: tokens never contain one.
#include <limits>

#include "tracer/definition/internal.hpp"

namespace ukp::tracer::definition_detail {

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
bool is_alpha(char c) noexcept { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_alnum(char c) noexcept { return is_digit(c) || is_alpha(c); }
bool is_space(char c) noexcept { return c == ' ' || (c >= '\t' && c <= '\r'); }

bool is_good_name(std::string_view name) noexcept {
    if (name.empty() || !(is_alpha(name[0]) || name[0] == '_')) {
        return false;
    }
    for (const char c : name) {
        if (!(is_alnum(c) || c == '_')) {
            return false;
        }
    }
    return true;
}

namespace {

int digit_value(char c) noexcept {
    if (is_digit(c)) {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return 99;  // larger than any base: ends a number
}

// Picks the base the way base 0 does and returns how many prefix bytes to skip.
unsigned pick_base(std::string_view text, std::size_t& skip) noexcept {
    skip = 0;
    if (!text.empty() && text[0] == '0') {
        if (text.size() >= 3 && (text[1] == 'x' || text[1] == 'X') && digit_value(text[2]) < 16) {
            skip = 2;
            return 16;
        }
        return 8;
    }
    return 10;
}

// Reads digits of `base` from the start; stops at the first non-digit.
// Returns nullopt on overflow or when no digit was read.
std::optional<Prefix> read_digits(std::string_view text, unsigned base) noexcept {
    std::uint64_t value = 0;
    std::size_t length = 0;
    constexpr auto limit = std::numeric_limits<std::uint64_t>::max();
    for (; length < text.size(); ++length) {
        const auto digit = static_cast<unsigned>(digit_value(text[length]));
        if (digit >= base) {
            break;
        }
        if (value > (limit - digit) / base) {
            return std::nullopt;
        }
        value = value * base + digit;
    }
    if (length == 0) {
        return std::nullopt;
    }
    return Prefix{value, length};
}

std::optional<std::uint64_t> read_whole(std::string_view text, bool decimal_only) noexcept {
    if (!text.empty() && text[0] == '+') {
        text.remove_prefix(1);
    }
    std::size_t skip = 0;
    const unsigned base = decimal_only ? 10 : pick_base(text, skip);
    text.remove_prefix(skip);
    const auto digits = read_digits(text, base);
    if (!digits || digits->length != text.size()) {
        return std::nullopt;
    }
    return digits->value;
}

}  // namespace

std::optional<std::uint64_t> parse_unsigned(std::string_view text) noexcept { return read_whole(text, false); }

std::optional<std::uint64_t> parse_decimal(std::string_view text) noexcept { return read_whole(text, true); }

std::optional<std::int64_t> parse_signed(std::string_view text) noexcept {
    constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    if (!text.empty() && text[0] == '-') {
        text.remove_prefix(1);
        // kstrtoll does not take "-+5".
        if (!text.empty() && text[0] == '+') {
            return std::nullopt;
        }
        const auto magnitude = read_whole(text, false);
        if (!magnitude || *magnitude > max + 1) {
            return std::nullopt;
        }
        // -(max + 1) is representable; negate in unsigned arithmetic.
        return static_cast<std::int64_t>(~*magnitude + 1);
    }
    const auto value = read_whole(text, false);
    if (!value || *value > max) {
        return std::nullopt;
    }
    return static_cast<std::int64_t>(*value);
}

std::optional<Prefix> parse_unsigned_prefix(std::string_view text) noexcept {
    std::size_t skip = 0;
    const unsigned base = pick_base(text, skip);
    auto digits = read_digits(text.substr(skip), base);
    if (!digits) {
        return std::nullopt;
    }
    digits->length += skip;
    return digits;
}

}  // namespace ukp::tracer::definition_detail
