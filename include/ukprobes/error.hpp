// Errors are values.  Every failure in ukprobes is one code from the list
// below, a message that names the input that caused it, and for probe specs
// the character position.  The C API turns a code into the negative errno the
// kernel would return for the same cause, so the list carries that errno.
#pragma once

#include <cerrno>
#include <expected>
#include <string>
#include <string_view>

// The library is built with hidden visibility; this marks its interface.
#ifndef UKP_PUBLIC
#define UKP_PUBLIC __attribute__((visibility("default")))
#endif

namespace ukp {

// X(name, errno, what it means)
#define UKP_ERROR_CODES(X)                                                                  \
    X(InvalidArgument, EINVAL, "an argument is malformed or missing")                       \
    X(NotInstructionBoundary, EILSEQ, "the address is inside an instruction")               \
    X(UnknownSymbol, ENOENT, "no module defines the symbol")                                \
    X(UnknownModule, ENOENT, "no loaded module has that name")                              \
    X(AmbiguousSymbol, EADDRNOTAVAIL, "several definitions match the symbol")               \
    X(AlreadyRegistered, EEXIST, "this probe object is registered already")                 \
    X(NotRegistered, ENOENT, "this probe object is not registered")                         \
    X(NotExecutable, EINVAL, "the address is not in an executable mapping")                 \
    X(Blacklisted, EINVAL, "the address is in code that probes must not touch")             \
    X(UnprobeableInstruction, EINVAL, "the instruction cannot be probed safely")            \
    X(UndecodableInstruction, EILSEQ, "the bytes at the address do not decode")             \
    X(OutOfRange, ERANGE, "no out-of-line memory within +-2 GiB of the address")            \
    X(Busy, EBUSY, "a conflicting operation or probe holds the address")                    \
    X(NoMemory, ENOMEM, "memory for slots or tables could not be had")                      \
    X(SystemError, EIO, "a system call failed; the message names it and its errno")

enum class Errc : int {
#define UKP_X(name, errnum, text) name,
    UKP_ERROR_CODES(UKP_X)
#undef UKP_X
};

// The errno the kernel's kprobes API returns for the same cause.
[[nodiscard]] UKP_PUBLIC int to_errno(Errc code) noexcept;
[[nodiscard]] UKP_PUBLIC std::string_view name_of(Errc code) noexcept;
[[nodiscard]] UKP_PUBLIC std::string_view describe(Errc code) noexcept;

struct Error {
    Errc code = Errc::InvalidArgument;
    std::string message;  // names the input: "symbol 'foo' in module 'libc.so.6'"
    int position = -1;    // character position in a probe spec, -1 when none
    int system_errno = 0; // set for SystemError

    [[nodiscard]] int to_errno() const noexcept {
        return code == Errc::SystemError && system_errno != 0 ? system_errno : ukp::to_errno(code);
    }
};

template <class T>
using Result = std::expected<T, Error>;

[[nodiscard]] inline std::unexpected<Error> make_error(Errc code, std::string message) {
    return std::unexpected(Error{code, std::move(message), -1, 0});
}

// A failed system call, with the call's name and what it worked on.
[[nodiscard]] UKP_PUBLIC std::unexpected<Error> make_system_error(std::string what, int errnum);

}  // namespace ukp
