// Decoding x86-64 machine code, through Zydis.
//
// Facts this relies on:
// - Zydis decodes one instruction at a time into a ZydisDecodedInstruction
//   plus up to ZYDIS_MAX_OPERAND_COUNT operands (visible ones first, then the
//   hidden ones such as the implicit rsp of push).  Decoding is pure: the
//   decoder and formatter objects are plain structs that we initialise on the
//   stack per call, so nothing here needs static state or locking.
// - Zydis' default decoder mode follows Intel for near branches in 64-bit
//   mode: an operand-size prefix (66) does not shorten the displacement.  The
//   probe analysis refuses the forms where AMD disagrees.
// - A relative branch is an instruction with a branch type (short or near)
//   whose immediate is relative to the next instruction.  `xbegin` also has a
//   relative immediate but no branch type: it is not a branch we rewrite.
// - A RIP-relative operand has RIP as its base (EIP with the 67 prefix);
//   `lea` counts, its operand is an address generation (AGEN) operand.
#include "arch/x86_64/decoder.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace ukp::x86 {

namespace {

ZydisDecoder long_mode_decoder() {
    ZydisDecoder decoder;
    ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    return decoder;
}

// Intel syntax, lowercase hex without zero padding (like objdump and our
// messages), operand sizes always spelled out: "mov rax, qword ptr [0x7f...]".
ZydisFormatter intel_formatter() {
    ZydisFormatter formatter;
    ZydisFormatterInit(&formatter, ZYDIS_FORMATTER_STYLE_INTEL);
    ZydisFormatterSetProperty(&formatter, ZYDIS_FORMATTER_PROP_FORCE_SIZE, ZYAN_TRUE);
    ZydisFormatterSetProperty(&formatter, ZYDIS_FORMATTER_PROP_HEX_UPPERCASE, ZYAN_FALSE);
    ZydisFormatterSetProperty(&formatter, ZYDIS_FORMATTER_PROP_ADDR_PADDING_ABSOLUTE,
                              ZYDIS_PADDING_DISABLED);
    ZydisFormatterSetProperty(&formatter, ZYDIS_FORMATTER_PROP_IMM_PADDING, ZYDIS_PADDING_DISABLED);
    ZydisFormatterSetProperty(&formatter, ZYDIS_FORMATTER_PROP_DISP_PADDING, ZYDIS_PADDING_DISABLED);
    return formatter;
}

std::string hex_bytes(std::span<const std::uint8_t> bytes) {
    return fmt::format("{:02x}", fmt::join(bytes, " "));
}

bool is_memory_operand(const ZydisDecodedOperand& operand) {
    return operand.type == ZYDIS_OPERAND_TYPE_MEMORY;
}

}  // namespace

bool Insn::is_rip_relative() const {
    auto all_operands = std::span(operands.data(), info.operand_count);
    return std::ranges::any_of(all_operands, [](const ZydisDecodedOperand& operand) {
        return is_memory_operand(operand) &&
               (operand.mem.base == ZYDIS_REGISTER_RIP || operand.mem.base == ZYDIS_REGISTER_EIP);
    });
}

bool Insn::is_relative_branch() const {
    bool is_branch = info.meta.branch_type == ZYDIS_BRANCH_TYPE_SHORT ||
                     info.meta.branch_type == ZYDIS_BRANCH_TYPE_NEAR;
    return is_branch && info.raw.imm[0].is_relative;
}

std::uint64_t Insn::branch_target() const {
    // Two's complement wrap-around gives next + signed displacement.
    return next_address() + static_cast<std::uint64_t>(info.raw.imm[0].value.s);
}

std::optional<std::uint8_t> jcc_condition(const Insn& insn) {
    constexpr std::uint8_t jcc_rel8_row = 0x70;   // 70+cc rel8
    constexpr std::uint8_t jcc_rel32_row = 0x80;  // 0F 80+cc rel32
    const auto row = static_cast<std::uint8_t>(insn.info.opcode & 0xF0);
    const bool is_jcc =
        insn.info.encoding == ZYDIS_INSTRUCTION_ENCODING_LEGACY &&
        insn.info.meta.category == ZYDIS_CATEGORY_COND_BR &&
        ((insn.info.opcode_map == ZYDIS_OPCODE_MAP_DEFAULT && row == jcc_rel8_row) ||
         (insn.info.opcode_map == ZYDIS_OPCODE_MAP_0F && row == jcc_rel32_row));
    if (!is_jcc) {
        return std::nullopt;
    }
    return static_cast<std::uint8_t>(insn.info.opcode & 0x0F);
}

Result<Insn> decode_one(std::span<const std::uint8_t> code, std::uint64_t address) {
    Insn insn;
    if (auto decoded = decode_into(code, address, insn, true); !decoded) {
        return std::unexpected(std::move(decoded.error()));
    }
    return insn;
}

Result<void> decode_into(std::span<const std::uint8_t> code, std::uint64_t address, Insn& insn,
                         bool with_operands) {
    if (code.empty()) {
        return make_error(Errc::UndecodableInstruction,
                          fmt::format("at {:#x}: no bytes to decode", address));
    }
    const auto decoder = long_mode_decoder();
    insn.address = address;
    ZyanStatus status;
    if (with_operands) {
        status = ZydisDecoderDecodeFull(&decoder, code.data(), code.size(), &insn.info,
                                        insn.operands.data());
    } else {
        ZydisDecoderContext context;
        status = ZydisDecoderDecodeInstruction(&decoder, &context, code.data(), code.size(),
                                               &insn.info);
    }
    if (!ZYAN_SUCCESS(status)) {
        auto shown = code.first(std::min(code.size(), max_instruction_length));
        return make_error(Errc::UndecodableInstruction,
                          fmt::format("at {:#x}: bytes {} do not decode as an x86-64 instruction",
                                      address, hex_bytes(shown)));
    }
    insn.length = insn.info.length;
    std::copy_n(code.begin(), insn.length, insn.bytes.begin());
    return {};
}

Result<void> check_instruction_boundary(std::span<const std::uint8_t> code, std::uint64_t start,
                                        std::uint64_t target) {
    if (target < start || target - start >= code.size()) {
        return make_error(Errc::InvalidArgument,
                          fmt::format("at {:#x}: outside the {} bytes decoded from {:#x}", target,
                                      code.size(), start));
    }
    std::uint64_t offset = 0;
    const std::uint64_t target_offset = target - start;
    while (offset < target_offset) {
        auto insn = decode_one(code.subspan(offset), start + offset);
        if (!insn) {
            return std::unexpected(std::move(insn.error()));
        }
        const auto next_offset = offset + insn->length;
        if (next_offset > target_offset) {
            return make_error(Errc::NotInstructionBoundary,
                              fmt::format("at {:#x}: inside the instruction '{}' at {:#x}", target,
                                          disassemble(*insn), insn->address));
        }
        offset = next_offset;
    }
    return {};
}

std::string disassemble(const Insn& insn) {
    const auto formatter = intel_formatter();
    // Enough for the longest AVX-512 form with masks and broadcast.
    char text[256];
    const auto status = ZydisFormatterFormatInstruction(
        &formatter, &insn.info, insn.operands.data(), insn.info.operand_count_visible, text,
        sizeof(text), insn.address, nullptr);
    if (!ZYAN_SUCCESS(status)) {
        return fmt::format("(bytes {})", hex_bytes(insn.code()));
    }
    return text;
}

}  // namespace ukp::x86
