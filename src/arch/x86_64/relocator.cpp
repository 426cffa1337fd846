// Relocating one instruction to a new address.
//
// Facts this relies on:
// - x86-64 is little endian; rel32 and disp32 fields are signed and counted
//   from the end of the instruction that holds them.
// - A RIP-relative operand is always encoded as ModRM mod=00 rm=101 with a
//   4-byte displacement (never the compressed EVEX disp8), at
//   info.raw.disp.offset.  Rewriting that field keeps the length, so
//   old_next - new_next == old_address - new_address.  With the 67 prefix the
//   base is EIP and the address wraps at 4 GiB: any new displacement fits,
//   computed modulo 2^32.
// - `call rel32` pushes the address of the next instruction.  The relocated
//   form pushes the ORIGINAL next address, so the callee returns into the
//   original code, and the unwinder sees the return address it expects.  The
//   push is spelled `lea` + two `mov dword`, because `push imm32` sign-extends
//   (useless for 0x7f.. addresses) and `sub rsp, 8` would change the flags.
// - `loop`, `loope`, `loopne`, `jrcxz`, `jecxz` only exist with rel8.  Keeping
//   their prefixes (67 selects ecx) and aiming them 2 bytes ahead onto a
//   `jmp rel32` keeps their exact semantics; a `jmp rel8` over that jmp is the
//   not-taken path.
// - Branch prefixes (bnd, branch hints) are dropped from rewritten branches:
//   MPX is gone and hints are ignored by current cores.  Operand-size
//   prefixed near branches (vendor dependent) never reach here: the probe
//   analysis refuses them.
// - `xbegin` has a relative immediate but is refused by the analysis; if one
//   arrives here anyway we refuse too rather than copy a wrong target.
#include "arch/x86_64/relocator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <optional>

namespace ukp::x86 {

namespace {

constexpr std::uint8_t jmp_rel32_opcode = 0xE9;
constexpr std::uint8_t jmp_rel8_opcode = 0xEB;
constexpr std::uint8_t two_byte_escape = 0x0F;
constexpr std::uint8_t jcc_rel32_opcode_base = 0x80;  // 0F 80+cc
constexpr std::size_t jcc_rel32_length = 6;

// Appends bytes to the output; capacity is checked once before writing.
class CodeWriter {
public:
    CodeWriter(std::span<std::uint8_t> out, std::uint64_t address) : out_(out), start_(address) {}

    void put(std::initializer_list<std::uint8_t> bytes) {
        put_bytes(std::span(bytes.begin(), bytes.size()));
    }
    void put_bytes(std::span<const std::uint8_t> bytes) {
        std::ranges::copy(bytes, out_.begin() + static_cast<std::ptrdiff_t>(size_));
        size_ += bytes.size();
    }
    void put_u32(std::uint32_t value) {
        size_ += sizeof(value);
        patch_u32(size_ - sizeof(value), value);
    }
    // Overwrites 4 bytes already written, little endian.
    void patch_u32(std::size_t offset, std::uint32_t value) {
        for (std::size_t index = 0; index < sizeof(value); ++index) {
            out_[offset + index] = static_cast<std::uint8_t>(value >> (8 * index));
        }
    }
    [[nodiscard]] std::span<std::uint8_t> rest() const { return out_.subspan(size_); }
    void advance(std::size_t count) { size_ += count; }
    [[nodiscard]] std::uint64_t address() const { return start_ + size_; }
    [[nodiscard]] std::size_t size() const { return size_; }

private:
    std::span<std::uint8_t> out_;
    std::uint64_t start_;
    std::size_t size_ = 0;
};

// The signed distance `to - from`, when it fits in 32 bits.  User-space
// addresses are below 2^47, so the 64-bit difference never overflows.
std::optional<std::int32_t> rel32_between(std::uint64_t from, std::uint64_t to) {
    const auto distance = static_cast<std::int64_t>(to - from);
    if (distance < std::numeric_limits<std::int32_t>::min() ||
        distance > std::numeric_limits<std::int32_t>::max()) {
        return std::nullopt;
    }
    return static_cast<std::int32_t>(distance);
}

Error out_of_range(std::string_view what, std::uint64_t from, std::uint64_t to) {
    return Error{Errc::OutOfRange,
                 fmt::format("at {:#x}: {} to {:#x} is beyond +-2 GiB", from, what, to), -1, 0};
}

// jmp rel8/rel32 -> jmp rel32
Result<std::size_t> relocate_jmp(const Insn& insn, CodeWriter& writer) {
    return emit_jmp_rel32(writer.address(), insn.branch_target(), writer.rest());
}

// jcc rel8/rel32 -> 0F 80+cc rel32; both encodings keep cc in the opcode's
// low nibble (7x and 0F 8x).
Result<std::size_t> relocate_jcc(const Insn& insn, std::uint8_t condition, CodeWriter& writer) {
    const auto rel = rel32_between(writer.address() + jcc_rel32_length, insn.branch_target());
    if (!rel) {
        return std::unexpected(out_of_range("jcc", writer.address(), insn.branch_target()));
    }
    writer.put({two_byte_escape, static_cast<std::uint8_t>(jcc_rel32_opcode_base | condition)});
    writer.put_u32(static_cast<std::uint32_t>(*rel));
    return writer.size();
}

// call rel32 -> push of the original return address, then jmp rel32:
//   lea rsp, [rsp-8]              48 8D 64 24 F8
//   mov dword [rsp], lo32         C7 04 24 imm32
//   mov dword [rsp+4], hi32       C7 44 24 04 imm32
//   jmp target                    E9 rel32
Result<std::size_t> relocate_call(const Insn& insn, CodeWriter& writer) {
    const auto start = writer.address();
    const auto return_address = insn.next_address();
    writer.put({0x48, 0x8D, 0x64, 0x24, 0xF8});
    writer.put({0xC7, 0x04, 0x24});
    writer.put_u32(static_cast<std::uint32_t>(return_address));
    writer.put({0xC7, 0x44, 0x24, 0x04});
    writer.put_u32(static_cast<std::uint32_t>(return_address >> 32));
    auto jump = emit_jmp_rel32(writer.address(), insn.branch_target(), writer.rest());
    if (!jump) {
        return std::unexpected(out_of_range("call", start, insn.branch_target()));
    }
    writer.advance(*jump);
    return writer.size();
}

// loop/loope/loopne/jrcxz/jecxz rel8 ->
//   <same prefixes and opcode> +2     taken: onto the jmp rel32
//   jmp +5                      EB 05 not taken: over it
//   jmp target                  E9 rel32
Result<std::size_t> relocate_short_only_branch(const Insn& insn, CodeWriter& writer) {
    constexpr std::uint8_t over_jmp_rel8 = 2;
    constexpr std::uint8_t over_jmp_rel32 = jmp_rel32_length;
    const auto start = writer.address();
    writer.put_bytes(insn.code().first(insn.info.raw.imm[0].offset));
    writer.put({over_jmp_rel8, jmp_rel8_opcode, over_jmp_rel32});
    auto jump = emit_jmp_rel32(writer.address(), insn.branch_target(), writer.rest());
    if (!jump) {
        return std::unexpected(out_of_range(ZydisMnemonicGetString(insn.info.mnemonic), start,
                                            insn.branch_target()));
    }
    writer.advance(*jump);
    return writer.size();
}

Result<std::size_t> relocate_relative_branch(const Insn& insn, CodeWriter& writer) {
    switch (insn.info.mnemonic) {
        case ZYDIS_MNEMONIC_JMP: return relocate_jmp(insn, writer);
        case ZYDIS_MNEMONIC_CALL: return relocate_call(insn, writer);
        case ZYDIS_MNEMONIC_LOOP:
        case ZYDIS_MNEMONIC_LOOPE:
        case ZYDIS_MNEMONIC_LOOPNE:
        case ZYDIS_MNEMONIC_JRCXZ:
        case ZYDIS_MNEMONIC_JECXZ:
        case ZYDIS_MNEMONIC_JCXZ: return relocate_short_only_branch(insn, writer);
        default: break;
    }
    if (auto condition = jcc_condition(insn)) {
        return relocate_jcc(insn, *condition, writer);
    }
    return make_error(Errc::UnprobeableInstruction,
                      fmt::format("at {:#x}: no relocation for the branch '{}'", insn.address,
                                  disassemble(insn)));
}

// mov rax, [rip+disp32] -> mov rax, [rip+disp32'] (same bytes otherwise)
Result<std::size_t> relocate_rip_relative(const Insn& insn, std::uint64_t new_address,
                                          CodeWriter& writer) {
    const auto& raw_disp = insn.info.raw.disp;
    const auto new_next = new_address + insn.length;
    const auto target = insn.next_address() + static_cast<std::uint64_t>(raw_disp.value);
    const bool is_eip_relative = insn.info.address_width == 32;
    std::optional<std::int32_t> new_disp;
    if (is_eip_relative) {
        new_disp = static_cast<std::int32_t>(static_cast<std::uint32_t>(target - new_next));
    } else {
        new_disp = rel32_between(new_next, target);
    }
    if (!new_disp) {
        return make_error(Errc::OutOfRange,
                          fmt::format("at {:#x}: '{}' addresses {:#x}, beyond +-2 GiB of the new "
                                      "address {:#x}",
                                      insn.address, disassemble(insn), target, new_address));
    }
    const auto instruction_offset = writer.size();
    writer.put_bytes(insn.code());
    writer.patch_u32(instruction_offset + raw_disp.offset, static_cast<std::uint32_t>(*new_disp));
    return writer.size();
}

bool has_relative_immediate(const Insn& insn) {
    return insn.info.raw.imm[0].is_relative || insn.info.raw.imm[1].is_relative;
}

}  // namespace

Result<std::size_t> relocate(const Insn& insn, std::uint64_t new_address,
                             std::span<std::uint8_t> out) {
    if (out.size() < max_relocated_length) {
        return make_error(Errc::InvalidArgument,
                          fmt::format("at {:#x}: relocation needs {} bytes of room, got {}",
                                      insn.address, max_relocated_length, out.size()));
    }
    CodeWriter writer(out, new_address);
    if (insn.is_relative_branch()) {
        return relocate_relative_branch(insn, writer);
    }
    if (has_relative_immediate(insn)) {
        return make_error(Errc::UnprobeableInstruction,
                          fmt::format("at {:#x}: '{}' has a relative target that cannot be moved",
                                      insn.address, disassemble(insn)));
    }
    if (insn.is_rip_relative()) {
        return relocate_rip_relative(insn, new_address, writer);
    }
    writer.put_bytes(insn.code());
    return writer.size();
}

Result<std::size_t> emit_jmp_rel32(std::uint64_t from, std::uint64_t to,
                                   std::span<std::uint8_t> out) {
    if (out.size() < jmp_rel32_length) {
        return make_error(Errc::InvalidArgument,
                          fmt::format("at {:#x}: jmp rel32 needs {} bytes of room, got {}", from,
                                      jmp_rel32_length, out.size()));
    }
    const auto rel = rel32_between(from + jmp_rel32_length, to);
    if (!rel) {
        return std::unexpected(out_of_range("jmp", from, to));
    }
    CodeWriter writer(out, from);
    writer.put({jmp_rel32_opcode});
    writer.put_u32(static_cast<std::uint32_t>(*rel));
    return writer.size();
}

}  // namespace ukp::x86
