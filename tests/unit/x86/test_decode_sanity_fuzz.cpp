// Decode-sanity fuzzing, in the spirit of the kernel's insn_sanity: random
// byte buffers (fixed seed, so failures reproduce) are decoded; every
// instruction that analyze_probe_insn accepts is relocated to a nearby address
// and the output is decoded again and checked against what the relocator
// promises:
// - relative branches keep their absolute target through the documented
//   rewrite (jmp/jcc -> rel32, call -> push original return + jmp, loop
//   family -> short branch over jmp rel32);
// - RIP-relative operands address the same absolute memory;
// - everything else is byte-for-byte the same instruction.
// Every accepted instruction the analysis emulates is also emulated once, on
// memory that always answers, to check that emulation never hits a missing
// case and never changes the flags or, for non-branches, jumps.
// A failure prints one line: the bytes, the addresses, and what differed.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <optional>
#include <random>

#include "arch/x86_64/probe_insn.hpp"
#include "arch/x86_64/relocator.hpp"
#include "x86_test_support.hpp"

namespace ukp::x86 {
namespace {

using testing::hex;

constexpr int buffer_count = 200'000;
constexpr int max_reported_failures = 10;
constexpr std::uint64_t fuzz_seed = 0x756b'7072'6f62'6573;  // "ukprobes"
constexpr std::uint64_t code_region = 0x7f00'0000'0000;
constexpr std::int64_t max_move = std::int64_t{1} << 30;  // +-1 GiB

using Failure = std::optional<std::string>;

// The absolute address a RIP/EIP-relative memory operand refers to.
std::uint64_t rip_relative_target(const Insn& insn) {
    for (std::size_t index = 0; index < insn.info.operand_count; ++index) {
        const auto& operand = insn.operands[index];
        if (operand.type == ZYDIS_OPERAND_TYPE_MEMORY &&
            (operand.mem.base == ZYDIS_REGISTER_RIP || operand.mem.base == ZYDIS_REGISTER_EIP)) {
            std::uint64_t target = 0;
            ZydisCalcAbsoluteAddress(&insn.info, &operand, insn.address, &target);
            return target;
        }
    }
    return 0;
}

// Decodes the relocated output into its instructions.
std::vector<Insn> decode_all(std::span<const std::uint8_t> code, std::uint64_t address,
                             std::string& problem) {
    std::vector<Insn> decoded;
    std::size_t offset = 0;
    while (offset < code.size()) {
        auto insn = decode_one(code.subspan(offset), address + offset);
        if (!insn) {
            problem = insn.error().message;
            return {};
        }
        offset += insn->length;
        decoded.push_back(*insn);
    }
    return decoded;
}

Failure check_jmp_or_jcc(const Insn& original, const std::vector<Insn>& output) {
    if (output.size() != 1 || output[0].info.raw.imm[0].size != 32) {
        return "expected a single rel32 branch";
    }
    if (jcc_condition(output[0]) != jcc_condition(original) ||
        output[0].info.mnemonic != original.info.mnemonic) {
        return "the branch kind changed to " + disassemble(output[0]);
    }
    if (output[0].branch_target() != original.branch_target()) {
        return "target moved to " + disassemble(output[0]);
    }
    return std::nullopt;
}

Failure check_call(const Insn& original, const std::vector<Insn>& output) {
    // lea rsp, [rsp-8]; mov dword [rsp], lo32; mov dword [rsp+4], hi32; jmp target
    const auto return_address = original.next_address();
    const bool shape_ok = output.size() == 4 && output[0].info.mnemonic == ZYDIS_MNEMONIC_LEA &&
                          output[1].info.mnemonic == ZYDIS_MNEMONIC_MOV &&
                          output[2].info.mnemonic == ZYDIS_MNEMONIC_MOV &&
                          output[3].info.mnemonic == ZYDIS_MNEMONIC_JMP;
    if (!shape_ok) {
        return "expected lea; mov; mov; jmp";
    }
    // Zydis sign-extends the dword immediates; only their low halves are stored.
    const auto stored_low = output[1].operands[1].imm.value.u & 0xFFFF'FFFF;
    const auto stored_high = output[2].operands[1].imm.value.u & 0xFFFF'FFFF;
    if (stored_low != (return_address & 0xFFFF'FFFF) || stored_high != (return_address >> 32)) {
        return "pushes the wrong return address";
    }
    if (output[3].branch_target() != original.branch_target()) {
        return "jumps to " + disassemble(output[3]);
    }
    return std::nullopt;
}

Failure check_short_only_branch(const Insn& original, const std::vector<Insn>& output,
                                std::uint64_t end) {
    // <loop/jrcxz> +2; jmp +5; jmp target
    const bool shape_ok = output.size() == 3 && output[0].info.mnemonic == original.info.mnemonic &&
                          output[1].info.mnemonic == ZYDIS_MNEMONIC_JMP &&
                          output[2].info.mnemonic == ZYDIS_MNEMONIC_JMP;
    if (!shape_ok) {
        return "expected <loop>; jmp; jmp";
    }
    if (output[0].branch_target() != output[2].address || output[1].branch_target() != end ||
        output[2].branch_target() != original.branch_target()) {
        return "wrong targets";
    }
    return std::nullopt;
}

Failure check_relative_branch(const Insn& original, const std::vector<Insn>& output,
                              std::uint64_t end) {
    switch (original.info.mnemonic) {
        case ZYDIS_MNEMONIC_CALL: return check_call(original, output);
        case ZYDIS_MNEMONIC_LOOP:
        case ZYDIS_MNEMONIC_LOOPE:
        case ZYDIS_MNEMONIC_LOOPNE:
        case ZYDIS_MNEMONIC_JRCXZ:
        case ZYDIS_MNEMONIC_JECXZ: return check_short_only_branch(original, output, end);
        default: return check_jmp_or_jcc(original, output);
    }
}

Failure check_copy(const Insn& original, const std::vector<Insn>& output) {
    if (output.size() != 1 || output[0].length != original.length ||
        output[0].info.mnemonic != original.info.mnemonic) {
        return "expected the same single instruction";
    }
    if (original.is_rip_relative()) {
        if (rip_relative_target(output[0]) != rip_relative_target(original)) {
            return fmt::format("addresses {:#x} instead of {:#x}", rip_relative_target(output[0]),
                               rip_relative_target(original));
        }
        return std::nullopt;
    }
    if (hex(output[0].code()) != hex(original.code())) {
        return "bytes changed";
    }
    return std::nullopt;
}

Failure check_relocation(const Insn& original, std::uint64_t new_address,
                         std::span<const std::uint8_t> output) {
    std::string problem;
    auto decoded = decode_all(output, new_address, problem);
    if (decoded.empty()) {
        return "output " + hex(output) + " does not decode: " + problem;
    }
    auto failure = original.is_relative_branch()
                       ? check_relative_branch(original, decoded, new_address + output.size())
                       : check_copy(original, decoded);
    if (failure) {
        return *failure + " (output " + hex(output) + ")";
    }
    return std::nullopt;
}

// OutOfRange is right only when what the instruction reaches is far away.
Failure check_out_of_range_is_justified(const Insn& original, std::uint64_t new_address) {
    constexpr std::int64_t certainly_reachable = (std::int64_t{1} << 31) - 64;
    const auto target = original.is_relative_branch() ? original.branch_target()
                                                      : rip_relative_target(original);
    const auto distance = static_cast<std::int64_t>(target - new_address);
    if (distance > -certainly_reachable && distance < certainly_reachable) {
        return fmt::format("OutOfRange although {:#x} is only {:#x} away", target, distance);
    }
    return std::nullopt;
}

Failure relocate_and_check(const Insn& insn, std::uint64_t new_address) {
    std::array<std::uint8_t, max_relocated_length> out{};
    auto size = relocate(insn, new_address, out);
    if (!size) {
        if (size.error().code == Errc::OutOfRange) {
            return check_out_of_range_is_justified(insn, new_address);
        }
        return "relocate failed: " + size.error().message;
    }
    return check_relocation(insn, new_address, std::span(out.data(), *size));
}

TEST(RelocatorFuzz, AcceptedRandomInstructionsRelocateFaithfully) {
    std::mt19937_64 random(fuzz_seed);
    std::uniform_int_distribution<std::int64_t> move(-max_move, max_move);
    int relocated = 0;
    int failures = 0;
    for (int round = 0; round < buffer_count && failures < max_reported_failures; ++round) {
        std::array<std::uint8_t, max_instruction_length> bytes{};
        for (auto& byte : bytes) {
            byte = static_cast<std::uint8_t>(random());
        }
        const auto address = code_region + (random() & 0xFFFF'FFFF);
        const auto new_address = address + static_cast<std::uint64_t>(move(random));
        auto insn = decode_one(bytes, address);
        if (!insn || !analyze_probe_insn(*insn)) {
            continue;
        }
        ++relocated;
        if (auto failure = relocate_and_check(*insn, new_address)) {
            ++failures;
            ADD_FAILURE() << "reproduce: bytes " << hex(insn->code())
                          << fmt::format(" at {:#x} -> {:#x}", address, new_address) << " ('"
                          << disassemble(*insn) << "'): " << *failure;
        }
    }
    // Sanity of the fuzzer itself: most random buffers start with a valid,
    // probeable instruction.
    EXPECT_GT(relocated, buffer_count / 4);
}

// Memory where every read yields the same pointer and every write succeeds.
bool read_constant(std::uint64_t, void* out, std::size_t size, void*) {
    constexpr std::uint8_t pointer_byte = 0x42;
    std::memset(out, pointer_byte, size);
    return true;
}
bool write_anything(std::uint64_t, const void*, std::size_t, void*) { return true; }

bool is_branch_kind(EmulationKind kind) {
    return kind == EmulationKind::JmpRel || kind == EmulationKind::JccRel ||
           kind == EmulationKind::CallRel || kind == EmulationKind::Ret ||
           kind == EmulationKind::JmpIndirect || kind == EmulationKind::CallIndirect ||
           kind == EmulationKind::Loop;
}

Failure emulate_and_check(const ProbeInsn& probe) {
    const MemoryAccess memory{&read_constant, &write_anything, nullptr};
    pt_regs regs{};
    regs.ip = probe.insn.address;
    regs.sp = 0x7ffd'0000'1000;
    regs.flags = 0x8D7;  // CF PF AF ZF SF OF set, and the reserved bit 1
    const auto before = regs;
    if (emulate(probe, regs, memory) != EmulationStatus::Done) {
        return "emulation reported a fault on memory that never faults";
    }
    if (regs.flags != before.flags) {
        return "flags changed";
    }
    if (!is_branch_kind(probe.emulation) && regs.ip != probe.insn.next_address()) {
        return fmt::format("ip is {:#x}, not the next instruction", regs.ip);
    }
    return std::nullopt;
}

TEST(EmulatorFuzz, AcceptedRandomInstructionsEmulateWithoutSurprises) {
    std::mt19937_64 random(fuzz_seed);
    int emulated = 0;
    int failures = 0;
    for (int round = 0; round < buffer_count && failures < max_reported_failures; ++round) {
        std::array<std::uint8_t, max_instruction_length> bytes{};
        for (auto& byte : bytes) {
            byte = static_cast<std::uint8_t>(random());
        }
        const auto address = code_region + (random() & 0xFFFF'FFFF);
        auto insn = decode_one(bytes, address);
        auto probe = insn ? analyze_probe_insn(*insn) : std::unexpected(insn.error());
        if (!probe || probe->strategy != Strategy::Emulate) {
            continue;
        }
        ++emulated;
        if (auto failure = emulate_and_check(*probe)) {
            ++failures;
            ADD_FAILURE() << "reproduce: bytes " << hex(insn->code())
                          << fmt::format(" at {:#x}", address) << " ('" << disassemble(*insn)
                          << "'): " << *failure;
        }
    }
    EXPECT_GT(emulated, 1000);
}

}  // namespace
}  // namespace ukp::x86
