#include "ukprobes/error.hpp"

#include <cstring>

namespace ukp {

namespace {
struct CodeInfo {
    std::string_view name;
    int errnum;
    std::string_view text;
};
constexpr CodeInfo code_table[] = {
#define UKP_X(name, errnum, text) {#name, errnum, text},
    UKP_ERROR_CODES(UKP_X)
#undef UKP_X
};
const CodeInfo& info(Errc code) { return code_table[static_cast<int>(code)]; }
}  // namespace

int to_errno(Errc code) noexcept { return info(code).errnum; }
std::string_view name_of(Errc code) noexcept { return info(code).name; }
std::string_view describe(Errc code) noexcept { return info(code).text; }

std::unexpected<Error> make_system_error(std::string what, int errnum) {
    return std::unexpected(Error{Errc::SystemError,
                                 std::move(what) + ": " + std::strerror(errnum), -1, errnum});
}

}  // namespace ukp
