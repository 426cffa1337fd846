// Golden byte tests for the relocator: input bytes at an old address, the new
// address, and the expected output, each with its disassembly.  The expected
// bytes were computed by hand and cross-checked with objdump, not with Zydis.
#include <gtest/gtest.h>

#include <array>
#include <limits>

#include "arch/x86_64/relocator.hpp"
#include "x86_test_support.hpp"

namespace ukp::x86 {
namespace {

using testing::Bytes;
using testing::hex;
using testing::must_decode;

// The probed code, and two out-of-line places ~256 MiB above and below it.
constexpr std::uint64_t old_address = 0x7f00'0000'1000;
constexpr std::uint64_t address_above = 0x7f00'1000'0000;
constexpr std::uint64_t address_below = 0x7eff'f000'2000;

Result<Bytes> try_relocate(const Bytes& input, std::uint64_t from, std::uint64_t to) {
    std::array<std::uint8_t, max_relocated_length> out{};
    auto size = relocate(must_decode(input, from), to, out);
    if (!size) {
        return std::unexpected(size.error());
    }
    return Bytes(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(*size));
}

void expect_relocation(const Bytes& input, std::uint64_t to, const Bytes& expected) {
    auto actual = try_relocate(input, old_address, to);
    ASSERT_TRUE(actual.has_value()) << actual.error().message;
    EXPECT_EQ(hex(*actual), hex(expected))
        << "relocating " << hex(input) << fmt::format(" from {:#x} to {:#x}", old_address, to);
}

// --- RIP-relative operands: disp32 rebased, the rest copied ---------------

TEST(Relocator, RipRelativeMovRebasedUpward) {
    // mov rax, [rip+0x100] (-> 0x7f0000001107)
    //   -> mov rax, [rip-0xfffef00] (-> 0x7f0000001107)
    expect_relocation({0x48, 0x8B, 0x05, 0x00, 0x01, 0x00, 0x00}, address_above,
                      {0x48, 0x8B, 0x05, 0x00, 0x11, 0x00, 0xF0});
}

TEST(Relocator, RipRelativeMovRebasedDownward) {
    // mov rax, [rip+0x100] (-> 0x7f0000001107)
    //   -> mov rax, [rip+0xffff100] (-> 0x7f0000001107)
    expect_relocation({0x48, 0x8B, 0x05, 0x00, 0x01, 0x00, 0x00}, address_below,
                      {0x48, 0x8B, 0x05, 0x00, 0xF1, 0xFF, 0x0F});
}

TEST(Relocator, RipRelativeLeaRebasedBothDirections) {
    // lea rdi, [rip-0x20] (-> 0x7f0000000fe7) -> lea rdi, [rip-0xffff020]
    expect_relocation({0x48, 0x8D, 0x3D, 0xE0, 0xFF, 0xFF, 0xFF}, address_above,
                      {0x48, 0x8D, 0x3D, 0xE0, 0x0F, 0x00, 0xF0});
    // lea rdi, [rip-0x20] (-> 0x7f0000000fe7) -> lea rdi, [rip+0xfffefe0]
    expect_relocation({0x48, 0x8D, 0x3D, 0xE0, 0xFF, 0xFF, 0xFF}, address_below,
                      {0x48, 0x8D, 0x3D, 0xE0, 0xEF, 0xFF, 0x0F});
}

TEST(Relocator, RipRelativeCmpKeepsTrailingImmediate) {
    // cmp dword [rip+0x200], 5 (-> 0x7f0000001207)
    //   -> cmp dword [rip-0xfffee00], 5 (-> 0x7f0000001207)
    expect_relocation({0x83, 0x3D, 0x00, 0x02, 0x00, 0x00, 0x05}, address_above,
                      {0x83, 0x3D, 0x00, 0x12, 0x00, 0xF0, 0x05});
}

TEST(Relocator, RipRelativeIndirectCallRebasedBothDirections) {
    // call [rip+0x1000] (-> 0x7f0000002006) -> call [rip+0x10000000]
    expect_relocation({0xFF, 0x15, 0x00, 0x10, 0x00, 0x00}, address_below,
                      {0xFF, 0x15, 0x00, 0x00, 0x00, 0x10});
    // call [rip+0x1000] (-> 0x7f0000002006) -> call [rip-0xfffe000]
    expect_relocation({0xFF, 0x15, 0x00, 0x10, 0x00, 0x00}, address_above,
                      {0xFF, 0x15, 0x00, 0x20, 0x00, 0xF0});
}

TEST(Relocator, EipRelativeRebasedModulo4GiB) {
    // mov rax, [eip+0x100] (-> 0x1108: the address wraps at 4 GiB)
    //   -> mov rax, [eip-0xfffef00] (-> 0x1108)
    expect_relocation({0x67, 0x48, 0x8B, 0x05, 0x00, 0x01, 0x00, 0x00}, address_above,
                      {0x67, 0x48, 0x8B, 0x05, 0x00, 0x11, 0x00, 0xF0});
}

TEST(Relocator, RipRelativeDisplacementOverflowIsOutOfRange) {
    // mov rax, [rip+0x7fff0000] (-> 0x7f007fff1007) moved 256 MiB down:
    // the distance exceeds 2 GiB.
    auto result = try_relocate({0x48, 0x8B, 0x05, 0x00, 0x00, 0xFF, 0x7F}, old_address,
                               address_below);
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code, Errc::OutOfRange);
    EXPECT_NE(result.error().message.find("0x7f0000001000"), std::string::npos)
        << result.error().message;
    EXPECT_NE(result.error().message.find("0x7efff0002000"), std::string::npos)
        << result.error().message;
}

// --- Relative branches keep their absolute target -------------------------

TEST(Relocator, JmpRel8BecomesRel32) {
    // jmp 0x7f0000001012 (EB 10) -> jmp 0x7f0000001012 (E9 rel32)
    expect_relocation({0xEB, 0x10}, address_above, {0xE9, 0x0D, 0x10, 0x00, 0xF0});
}

TEST(Relocator, JmpRel32Retargeted) {
    // jmp 0x7f0000001105 -> jmp 0x7f0000001105
    expect_relocation({0xE9, 0x00, 0x01, 0x00, 0x00}, address_below, {0xE9, 0x00, 0xF1, 0xFF, 0x0F});
}

TEST(Relocator, BndJmpDropsThePrefix) {
    // bnd jmp 0x7f0000001106 (F2 E9 rel32) -> jmp 0x7f0000001106
    expect_relocation({0xF2, 0xE9, 0x00, 0x01, 0x00, 0x00}, address_above,
                      {0xE9, 0x01, 0x11, 0x00, 0xF0});
}

TEST(Relocator, JccRel8OutsideBlockBecomesRel32) {
    // je 0x7f0000001012 (74 10) -> je 0x7f0000001012 (0F 84 rel32)
    expect_relocation({0x74, 0x10}, address_above, {0x0F, 0x84, 0x0C, 0x10, 0x00, 0xF0});
    // jl 0x7f0000000ff2 (7C F0, backward) -> jl 0x7f0000000ff2
    expect_relocation({0x7C, 0xF0}, address_above, {0x0F, 0x8C, 0xEC, 0x0F, 0x00, 0xF0});
    // ja 0x7f0000001081 (77 7F) -> ja 0x7f0000001081
    expect_relocation({0x77, 0x7F}, address_below, {0x0F, 0x87, 0x7B, 0xF0, 0xFF, 0x0F});
}

TEST(Relocator, JccRel32Retargeted) {
    // jne 0x7f0000001106 -> jne 0x7f0000001106
    expect_relocation({0x0F, 0x85, 0x00, 0x01, 0x00, 0x00}, address_above,
                      {0x0F, 0x85, 0x00, 0x11, 0x00, 0xF0});
    // jg 0x7f0000000f06 -> jg 0x7f0000000f06
    expect_relocation({0x0F, 0x8F, 0x00, 0xFF, 0xFF, 0xFF}, address_below,
                      {0x0F, 0x8F, 0x00, 0xEF, 0xFF, 0x0F});
}

TEST(Relocator, CallRel32PushesOriginalReturnAddress) {
    // call 0x7f0000001105 (returns to 0x7f0000001005) ->
    //   lea rsp, [rsp-8]
    //   mov dword [rsp], 0x00001005
    //   mov dword [rsp+4], 0x00007f00
    //   jmp 0x7f0000001105
    expect_relocation({0xE8, 0x00, 0x01, 0x00, 0x00}, address_above,
                      {0x48, 0x8D, 0x64, 0x24, 0xF8,                    //
                       0xC7, 0x04, 0x24, 0x05, 0x10, 0x00, 0x00,        //
                       0xC7, 0x44, 0x24, 0x04, 0x00, 0x7F, 0x00, 0x00,  //
                       0xE9, 0xEC, 0x10, 0x00, 0xF0});
}

TEST(Relocator, TlsCallWithRedundantPrefixesReturnsAfterAllEightBytes) {
    // data16 data16 rex.W call 0x7f0000000008 (66 66 48 E8 rel32; returns to
    // 0x7f0000001008) ->
    //   lea rsp, [rsp-8]
    //   mov dword [rsp], 0x00001008
    //   mov dword [rsp+4], 0x00007f00
    //   jmp 0x7f0000000008
    expect_relocation({0x66, 0x66, 0x48, 0xE8, 0x00, 0xF0, 0xFF, 0xFF}, address_below,
                      {0x48, 0x8D, 0x64, 0x24, 0xF8,                    //
                       0xC7, 0x04, 0x24, 0x08, 0x10, 0x00, 0x00,        //
                       0xC7, 0x44, 0x24, 0x04, 0x00, 0x7F, 0x00, 0x00,  //
                       0xE9, 0xEF, 0xDF, 0xFF, 0x0F});
}

TEST(Relocator, LoopBecomesShortBranchOverJmpRel32) {
    // loop 0x7f0000001000 (E2 FE) ->
    //   loop +2          (E2 02: taken -> the jmp rel32)
    //   jmp +5           (EB 05: not taken -> past it)
    //   jmp 0x7f0000001000
    expect_relocation({0xE2, 0xFE}, address_above,
                      {0xE2, 0x02, 0xEB, 0x05, 0xE9, 0xF7, 0x0F, 0x00, 0xF0});
}

TEST(Relocator, LoopneBecomesShortBranchOverJmpRel32) {
    // loopne 0x7f0000000fc2 (E0 C0) -> loopne +2; jmp +5; jmp 0x7f0000000fc2
    expect_relocation({0xE0, 0xC0}, address_above,
                      {0xE0, 0x02, 0xEB, 0x05, 0xE9, 0xB9, 0x0F, 0x00, 0xF0});
}

TEST(Relocator, JrcxzBecomesShortBranchOverJmpRel32) {
    // jrcxz 0x7f0000001012 (E3 10) -> jrcxz +2; jmp +5; jmp 0x7f0000001012
    expect_relocation({0xE3, 0x10}, address_below,
                      {0xE3, 0x02, 0xEB, 0x05, 0xE9, 0x09, 0xF0, 0xFF, 0x0F});
}

TEST(Relocator, JecxzKeepsAddressSizePrefix) {
    // jecxz 0x7f0000001013 (67 E3 10) -> jecxz +2; jmp +5; jmp 0x7f0000001013
    expect_relocation({0x67, 0xE3, 0x10}, address_above,
                      {0x67, 0xE3, 0x02, 0xEB, 0x05, 0xE9, 0x09, 0x10, 0x00, 0xF0});
}

TEST(Relocator, BranchTargetBeyond2GiBIsOutOfRange) {
    // jmp 0x7f0000001012 placed 4 GiB away.
    auto result = try_relocate({0xEB, 0x10}, old_address, old_address + (std::uint64_t{1} << 32));
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code, Errc::OutOfRange);
    EXPECT_NE(result.error().message.find("0x7f0000001012"), std::string::npos)
        << result.error().message;
}

TEST(Relocator, CallTargetBeyond2GiBIsOutOfRange) {
    // call 0x7f0000001105 placed 4 GiB away.
    auto result = try_relocate({0xE8, 0x00, 0x01, 0x00, 0x00}, old_address,
                               old_address + (std::uint64_t{1} << 32));
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code, Errc::OutOfRange);
}

// --- Position-independent instructions are copied verbatim ----------------

TEST(Relocator, PositionIndependentInstructionsCopiedVerbatim) {
    const Bytes verbatim[] = {
        {0x55},                          // push rbp
        {0x48, 0x89, 0xE5},              // mov rbp, rsp
        {0x48, 0x83, 0xEC, 0x20},        // sub rsp, 0x20
        {0x48, 0x81, 0xEC, 0x00, 0x01, 0x00, 0x00},  // sub rsp, 0x100
        {0xF3, 0x0F, 0x1E, 0xFA},        // endbr64
        {0x31, 0xC0},                    // xor eax, eax
        {0x0F, 0x05},                    // syscall
        {0x64, 0x48, 0x8B, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00},  // mov rax, fs:[0x28]
        {0xF0, 0x48, 0x0F, 0xB1, 0x0F},  // lock cmpxchg [rdi], rcx
        {0xFF, 0xE0},                    // jmp rax
        {0xC3},                          // ret
    };
    for (const auto& input : verbatim) {
        expect_relocation(input, address_above, input);
        expect_relocation(input, address_below, input);
    }
}

// --- Refusals and buffer sizes ---------------------------------------------

TEST(Relocator, XbeginIsRefusedRatherThanCopiedWithAStaleTarget) {
    // xbegin 0x7f0000001106
    auto result = try_relocate({0xC7, 0xF8, 0x00, 0x01, 0x00, 0x00}, old_address, address_above);
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code, Errc::UnprobeableInstruction);
}

TEST(Relocator, TooSmallOutputIsInvalidArgument) {
    std::array<std::uint8_t, max_relocated_length - 1> out{};
    auto result = relocate(must_decode({0x55}, old_address), address_above, out);  // push rbp
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code, Errc::InvalidArgument);
}

TEST(Relocator, EmitJmpRel32Golden) {
    std::array<std::uint8_t, jmp_rel32_length> out{};
    // at 0x7f0000001000: jmp 0x7f0000002000
    auto size = emit_jmp_rel32(0x7f00'0000'1000, 0x7f00'0000'2000, out);
    ASSERT_TRUE(size.has_value()) << size.error().message;
    EXPECT_EQ(hex(std::span(out.data(), *size)), hex(Bytes{0xE9, 0xFB, 0x0F, 0x00, 0x00}));
    // at 0x7f0000001000: jmp 0x7f0000001000 (itself)
    size = emit_jmp_rel32(0x7f00'0000'1000, 0x7f00'0000'1000, out);
    ASSERT_TRUE(size.has_value()) << size.error().message;
    EXPECT_EQ(hex(std::span(out.data(), *size)), hex(Bytes{0xE9, 0xFB, 0xFF, 0xFF, 0xFF}));
}

TEST(Relocator, EmitJmpRel32AcceptsExactlyTheSigned32BitRange) {
    std::array<std::uint8_t, jmp_rel32_length> out{};
    constexpr std::uint64_t from = 0x7f00'8000'0000;
    constexpr std::uint64_t next = from + jmp_rel32_length;
    constexpr auto max_forward = std::uint64_t{std::numeric_limits<std::int32_t>::max()};
    constexpr auto max_backward = std::uint64_t{1} << 31;
    EXPECT_TRUE(emit_jmp_rel32(from, next + max_forward, out).has_value());
    EXPECT_TRUE(emit_jmp_rel32(from, next - max_backward, out).has_value());
    auto too_far_forward = emit_jmp_rel32(from, next + max_forward + 1, out);
    auto too_far_backward = emit_jmp_rel32(from, next - max_backward - 1, out);
    ASSERT_FALSE(too_far_forward.has_value());
    ASSERT_FALSE(too_far_backward.has_value());
    EXPECT_EQ(too_far_forward.error().code, Errc::OutOfRange);
    EXPECT_EQ(too_far_backward.error().code, Errc::OutOfRange);
}

TEST(Relocator, EmitJmpRel32IntoTooSmallBufferIsInvalidArgument) {
    std::array<std::uint8_t, jmp_rel32_length - 1> out{};
    auto result = emit_jmp_rel32(0x1000, 0x2000, out);
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code, Errc::InvalidArgument);
}

}  // namespace
}  // namespace ukp::x86
