// Helpers shared by the x86-64 instruction-tool tests.  Test-only: lives
// beside the tests, never in a public header.
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "arch/x86_64/decoder.hpp"

namespace ukp::x86::testing {

using Bytes = std::vector<std::uint8_t>;

// "48 8b 05": how golden bytes are compared, so a failure shows both sides.
inline std::string hex(std::span<const std::uint8_t> bytes) {
    return fmt::format("{:02x}", fmt::join(bytes, " "));
}

// Decodes bytes the test knows to be valid; a failure aborts the test with
// the decoder's message (GoogleTest reports the exception).
inline Insn must_decode(const Bytes& code, std::uint64_t address) {
    auto insn = decode_one(code, address);
    if (!insn) {
        throw std::runtime_error(insn.error().message);
    }
    return *insn;
}

}  // namespace ukp::x86::testing
