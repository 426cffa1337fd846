// The definition parser's error vocabulary and how an error is shown.
//
// The kernel's error_log shows a failed command with a caret under the byte
// it blames; `ukprobe` prints the same picture, indented by two spaces so
// that the caret lines up with the command above it:
//
//   ukprobe: error: Invalid register name
//     p vfs_read %none_reg
//                ^
#include <array>
#include <string>

#include "tracer/definition/internal.hpp"

namespace ukp::tracer {
namespace definition_detail {

namespace {
constexpr std::array messages{
#define UKP_DEFINITION_ERROR_TEXT(name, text) std::string_view{text},
    UKP_DEFINITION_ERRORS(UKP_DEFINITION_ERROR_TEXT)
#undef UKP_DEFINITION_ERROR_TEXT
};
}  // namespace

std::string_view message_of(Code code) noexcept {
    const auto index = static_cast<std::size_t>(code);
    return index < messages.size() ? messages[index] : std::string_view{"Unknown error"};
}

}  // namespace definition_detail

std::string format_error(const DefinitionError& error, std::string_view program) {
    // A caret past the end points just after the command (a missing piece).
    const std::size_t caret = error.position <= error.command.size() ? error.position : error.command.size();
    std::string text;
    text.reserve(program.size() + error.message.size() + 2 * error.command.size() + 16);
    text.append(program).append(": error: ").append(error.message).append("\n  ");
    // Control characters (tabs, newlines) would break the alignment of the
    // caret; each becomes one space so that byte offsets stay columns.
    for (const char c : error.command) {
        text.push_back(static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? ' ' : c);
    }
    text.append("\n  ").append(caret, ' ').append("^\n");
    return text;
}

}  // namespace ukp::tracer
