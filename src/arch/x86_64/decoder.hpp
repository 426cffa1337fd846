// Decoding x86-64 machine code, through Zydis.
//
// Facts this relies on: an x86-64 instruction is 1..15 bytes; user-space code
// on Linux runs in 64-bit mode, so every decode uses ZYDIS_MACHINE_MODE_LONG_64
// with 64-bit stack width.  Whether an address is an instruction boundary
// can only be proven by decoding forward from a known boundary (a symbol's
// start), which is what tracefs does for "sym+offs" too.
#pragma once

#include <Zydis/Zydis.h>

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "ukprobes/error.hpp"

namespace ukp::x86 {

inline constexpr std::size_t max_instruction_length = ZYDIS_MAX_INSTRUCTION_LENGTH;  // 15

struct Insn {
    std::uint64_t address = 0;  // where the instruction lives in the original code
    std::uint8_t length = 0;
    std::array<std::uint8_t, max_instruction_length> bytes{};
    ZydisDecodedInstruction info{};
    std::array<ZydisDecodedOperand, ZYDIS_MAX_OPERAND_COUNT> operands{};

    [[nodiscard]] std::uint64_t next_address() const { return address + length; }
    [[nodiscard]] std::span<const std::uint8_t> code() const { return {bytes.data(), length}; }
    // A memory operand addressed relative to RIP (including `lea`).
    [[nodiscard]] bool is_rip_relative() const;
    // jmp/jcc/call/loop/jrcxz with an immediate displacement.
    [[nodiscard]] bool is_relative_branch() const;
    // The target of a relative branch; only valid when is_relative_branch().
    [[nodiscard]] std::uint64_t branch_target() const;
};

// The condition code of a jcc (0..15: the low nibble of opcode 7x or 0F 8x,
// 0 = jo ... 15 = jg); nullopt for every other instruction, loop/jrcxz included.
[[nodiscard]] std::optional<std::uint8_t> jcc_condition(const Insn& insn);

// Decodes the first instruction of `code`, which lives at `address`.
// Errc::UndecodableInstruction when the bytes are not a valid instruction.
[[nodiscard]] Result<Insn> decode_one(std::span<const std::uint8_t> code, std::uint64_t address);

// decode_one() in place, into an Insn a loop reuses (an Insn is over a
// kilobyte: building and returning one per instruction costs more than
// Zydis' own work in a long scan).  With `with_operands` false only `info`,
// `bytes` and `length` are set, and `operands` keeps stale contents: for
// scans that read operands of a few instructions only (decode those again
// with operands).
[[nodiscard]] Result<void> decode_into(std::span<const std::uint8_t> code, std::uint64_t address, Insn& insn,
                                       bool with_operands);

// Decodes forward from `start` (the first byte of `code`) and says whether
// `target` is the first byte of one of the instructions.  Errc::NotInstructionBoundary
// when it falls inside one; Errc::UndecodableInstruction when decoding fails
// before reaching it; Errc::InvalidArgument when target is outside the code.
[[nodiscard]] Result<void> check_instruction_boundary(std::span<const std::uint8_t> code,
                                                      std::uint64_t start, std::uint64_t target);

// "mov rax, qword ptr [rip+0x10]": one line, for messages and golden tests.
[[nodiscard]] std::string disassemble(const Insn& insn);

}  // namespace ukp::x86
