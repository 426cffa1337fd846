// The decoder wrapper: decoding, classification predicates, instruction
// boundaries, and the one-line disassembly used in messages.
#include <gtest/gtest.h>

#include "arch/x86_64/decoder.hpp"
#include "x86_test_support.hpp"

namespace ukp::x86 {
namespace {

using testing::Bytes;
using testing::must_decode;

constexpr std::uint64_t code_address = 0x7f00'0000'1000;

bool message_names(const Error& error, std::string_view text) {
    return error.message.find(text) != std::string::npos;
}

TEST(Decoder, DecodesLengthBytesAndAddress) {
    // mov rax, [rip+0x100]; followed by push rbp, which must not be included
    const Bytes code = {0x48, 0x8B, 0x05, 0x00, 0x01, 0x00, 0x00, 0x55};
    auto insn = must_decode(code, code_address);
    EXPECT_EQ(insn.length, 7);
    EXPECT_EQ(insn.address, code_address);
    EXPECT_EQ(insn.next_address(), code_address + 7);
    EXPECT_EQ(testing::hex(insn.code()), "48 8b 05 00 01 00 00");
    EXPECT_EQ(insn.info.mnemonic, ZYDIS_MNEMONIC_MOV);
}

TEST(Decoder, EmptyInputIsUndecodable) {
    auto insn = decode_one({}, code_address);
    ASSERT_FALSE(insn.has_value());
    EXPECT_EQ(insn.error().code, Errc::UndecodableInstruction);
    EXPECT_TRUE(message_names(insn.error(), "0x7f0000001000")) << insn.error().message;
}

TEST(Decoder, InvalidOpcodeIsUndecodableAndNamesAddressAndBytes) {
    // 06 is `push es`, invalid in 64-bit mode
    auto insn = decode_one(Bytes{0x06}, code_address);
    ASSERT_FALSE(insn.has_value());
    EXPECT_EQ(insn.error().code, Errc::UndecodableInstruction);
    EXPECT_TRUE(message_names(insn.error(), "at 0x7f0000001000")) << insn.error().message;
    EXPECT_TRUE(message_names(insn.error(), "06")) << insn.error().message;
}

TEST(Decoder, TruncatedInstructionIsUndecodable) {
    // call rel32 missing two bytes of its displacement
    auto insn = decode_one(Bytes{0xE8, 0x00, 0x00}, code_address);
    ASSERT_FALSE(insn.has_value());
    EXPECT_EQ(insn.error().code, Errc::UndecodableInstruction);
}

TEST(Decoder, RipRelativeOperandsAreRecognised) {
    // mov rax, [rip+0x100]
    EXPECT_TRUE(must_decode({0x48, 0x8B, 0x05, 0x00, 0x01, 0x00, 0x00}, code_address).is_rip_relative());
    // lea rdi, [rip-0x20]
    EXPECT_TRUE(must_decode({0x48, 0x8D, 0x3D, 0xE0, 0xFF, 0xFF, 0xFF}, code_address).is_rip_relative());
    // call [rip+0x1000]
    EXPECT_TRUE(must_decode({0xFF, 0x15, 0x00, 0x10, 0x00, 0x00}, code_address).is_rip_relative());
    // mov rax, [eip+0x100]
    EXPECT_TRUE(must_decode({0x67, 0x48, 0x8B, 0x05, 0x00, 0x01, 0x00, 0x00}, code_address)
                    .is_rip_relative());
}

TEST(Decoder, OtherOperandsAreNotRipRelative) {
    EXPECT_FALSE(must_decode({0x48, 0x8B, 0x44, 0x24, 0x08}, code_address).is_rip_relative());  // mov rax, [rsp+8]
    EXPECT_FALSE(must_decode({0x48, 0x8B, 0x04, 0x25, 0x00, 0x10, 0x00, 0x00}, code_address)
                     .is_rip_relative());  // mov rax, [0x1000] (absolute, SIB without base)
    EXPECT_FALSE(must_decode({0xEB, 0x10}, code_address).is_rip_relative());  // jmp rel8
    EXPECT_FALSE(must_decode({0x55}, code_address).is_rip_relative());        // push rbp
}

TEST(Decoder, RelativeBranchesAndTheirTargets) {
    struct Case {
        Bytes bytes;
        std::uint64_t target;
    };
    const Case cases[] = {
        {{0xEB, 0x10}, code_address + 0x12},                          // jmp rel8
        {{0xEB, 0xFE}, code_address},                                 // jmp rel8 to itself
        {{0xE9, 0x00, 0xFF, 0xFF, 0xFF}, code_address + 5 - 0x100},   // jmp rel32 backward
        {{0x74, 0x10}, code_address + 0x12},                          // je rel8
        {{0x0F, 0x8F, 0x00, 0x01, 0x00, 0x00}, code_address + 0x106},  // jg rel32
        {{0xE8, 0x00, 0x01, 0x00, 0x00}, code_address + 0x105},       // call rel32
        {{0xE2, 0xFE}, code_address},                                 // loop rel8
        {{0xE3, 0x10}, code_address + 0x12},                          // jrcxz rel8
    };
    for (const auto& test_case : cases) {
        auto insn = must_decode(test_case.bytes, code_address);
        EXPECT_TRUE(insn.is_relative_branch()) << disassemble(insn);
        EXPECT_EQ(insn.branch_target(), test_case.target) << disassemble(insn);
    }
}

TEST(Decoder, IndirectBranchesRetAndXbeginAreNotRelativeBranches) {
    EXPECT_FALSE(must_decode({0xFF, 0xE0}, code_address).is_relative_branch());  // jmp rax
    EXPECT_FALSE(must_decode({0xFF, 0x15, 0x00, 0x10, 0x00, 0x00}, code_address)
                     .is_relative_branch());                                    // call [rip+0x1000]
    EXPECT_FALSE(must_decode({0xC3}, code_address).is_relative_branch());       // ret
    EXPECT_FALSE(must_decode({0xC7, 0xF8, 0x00, 0x01, 0x00, 0x00}, code_address)
                     .is_relative_branch());                                    // xbegin rel32
}

TEST(Decoder, JccConditionFromBothEncodings) {
    for (std::uint8_t condition = 0; condition < 16; ++condition) {
        // j<cc> rel8 (70+cc) and j<cc> rel32 (0F 80+cc)
        auto short_form = must_decode({static_cast<std::uint8_t>(0x70 | condition), 0x10}, code_address);
        auto near_form = must_decode(
            {0x0F, static_cast<std::uint8_t>(0x80 | condition), 0x00, 0x01, 0x00, 0x00}, code_address);
        EXPECT_EQ(jcc_condition(short_form), condition) << disassemble(short_form);
        EXPECT_EQ(jcc_condition(near_form), condition) << disassemble(near_form);
    }
}

TEST(Decoder, JccConditionIsEmptyForOtherBranches) {
    EXPECT_FALSE(jcc_condition(must_decode({0xEB, 0x10}, code_address)));  // jmp rel8
    EXPECT_FALSE(jcc_condition(must_decode({0xE2, 0xFE}, code_address)));  // loop
    EXPECT_FALSE(jcc_condition(must_decode({0xE3, 0x10}, code_address)));  // jrcxz
    EXPECT_FALSE(jcc_condition(must_decode({0x0F, 0x44, 0xC1}, code_address)));  // cmove eax, ecx
    EXPECT_FALSE(jcc_condition(must_decode({0xC7, 0xF8, 0x00, 0x01, 0x00, 0x00}, code_address)));  // xbegin
}

TEST(Decoder, DisassemblyShowsAbsoluteTargets) {
    EXPECT_EQ(disassemble(must_decode({0x48, 0x8B, 0x05, 0x00, 0x01, 0x00, 0x00}, code_address)),
              "mov rax, qword ptr [0x7f0000001107]");
    EXPECT_EQ(disassemble(must_decode({0xEB, 0x10}, code_address)), "jmp 0x7f0000001012");
    EXPECT_EQ(disassemble(must_decode({0xE8, 0x00, 0x01, 0x00, 0x00}, code_address)),
              "call 0x7f0000001105");
    EXPECT_EQ(disassemble(must_decode({0x48, 0x83, 0xEC, 0x20}, code_address)), "sub rsp, 0x20");
}

// Code for the boundary tests, from 0x7f0000001000:
//   +0  55                  push rbp
//   +1  48 89 e5            mov rbp, rsp
//   +4  48 83 ec 20         sub rsp, 0x20
//   +8  06                  (invalid in 64-bit mode)
const Bytes boundary_code = {0x55, 0x48, 0x89, 0xE5, 0x48, 0x83, 0xEC, 0x20, 0x06};

TEST(Decoder, BoundaryAtInstructionStartsIsAccepted) {
    for (std::uint64_t offset : {0, 1, 4, 8}) {
        auto result = check_instruction_boundary(boundary_code, code_address, code_address + offset);
        EXPECT_TRUE(result.has_value()) << "offset " << offset << ": " << result.error().message;
    }
}

TEST(Decoder, AddressInsideAnInstructionIsNotABoundary) {
    for (std::uint64_t offset : {2, 3, 5, 7}) {
        auto result = check_instruction_boundary(boundary_code, code_address, code_address + offset);
        ASSERT_FALSE(result.has_value()) << "offset " << offset;
        EXPECT_EQ(result.error().code, Errc::NotInstructionBoundary);
        EXPECT_TRUE(message_names(result.error(), fmt::format("{:#x}", code_address + offset)))
            << result.error().message;
    }
}

TEST(Decoder, UndecodableBytesBeforeTheTargetAreReported) {
    const Bytes code = {0x55, 0x06, 0x90, 0x90};  // push rbp; (invalid); nop; nop
    auto result = check_instruction_boundary(code, code_address, code_address + 3);
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code, Errc::UndecodableInstruction);
    EXPECT_TRUE(message_names(result.error(), "0x7f0000001001")) << result.error().message;
}

TEST(Decoder, TargetOutsideTheCodeIsInvalidArgument) {
    for (std::uint64_t target : {code_address - 1, code_address + boundary_code.size()}) {
        auto result = check_instruction_boundary(boundary_code, code_address, target);
        ASSERT_FALSE(result.has_value());
        EXPECT_EQ(result.error().code, Errc::InvalidArgument);
    }
}

}  // namespace
}  // namespace ukp::x86
