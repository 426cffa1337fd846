// Deciding, once per probe, how the probed instruction is executed.
//
// Facts this relies on:
// - Refusals are the instructions a copy cannot reproduce or a trap would
//   break: int3 and `int 3` are the program's own breakpoints; int1/into/
//   int n raise their own exceptions; far transfers, iret, sysenter and
//   sysexit change the code segment; a transaction (xbegin/xabort/xend)
//   aborts on our trap; hlt and what Zydis flags privileged fault in ring 3.
//   push/pop fs/gs read or load a segment selector, which we do not model.
// - A near branch with an operand-size prefix (66) and no REX.W means
//   different things to Intel (prefix ignored) and AMD (16-bit target, and a
//   shorter rel16 immediate), so its length and effect are vendor dependent:
//   refused.  REX.W wins over 66 on both, which keeps the
//   `66 66 48 e8 rel32` call of the TLS general-dynamic model probeable.
// - fs/gs-prefixed memory operands of indirect branches add a segment base
//   that pt_regs does not hold, so the emulator could not compute the target:
//   refused.  Other segment prefixes have base 0 in 64-bit mode.
// - Emulation is chosen for instructions whose copy would depend on RIP
//   (branches, calls, ret) or would need a trap to be worth it (nops, push,
//   pop).  16-bit push/pop (66 prefix) and loop with the 67 prefix are rare
//   enough to leave to a boosted copy, where the CPU itself is exact.
// - Everything else is position independent once RIP-relative operands are
//   rebased, and is boosted.
#include "arch/x86_64/probe_insn.hpp"

#include <fmt/format.h>

#include <optional>
#include <string_view>

namespace ukp::x86 {

namespace {

bool is_operand_register_of_class(const Insn& insn, ZydisRegisterClass register_class) {
    const auto& operand = insn.operands[0];
    return operand.type == ZYDIS_OPERAND_TYPE_REGISTER &&
           ZydisRegisterGetClass(operand.reg.value) == register_class;
}

bool is_segment_push_or_pop(const Insn& insn) {
    const auto mnemonic = insn.info.mnemonic;
    return (mnemonic == ZYDIS_MNEMONIC_PUSH || mnemonic == ZYDIS_MNEMONIC_POP) &&
           is_operand_register_of_class(insn, ZYDIS_REGCLASS_SEGMENT);
}

bool is_near_branch(const Insn& insn) {
    return insn.info.meta.branch_type == ZYDIS_BRANCH_TYPE_SHORT ||
           insn.info.meta.branch_type == ZYDIS_BRANCH_TYPE_NEAR;
}

bool has_vendor_dependent_operand_size(const Insn& insn) {
    const auto attributes = insn.info.attributes;
    const bool has_rex_w = (attributes & ZYDIS_ATTRIB_HAS_REX) != 0 && insn.info.raw.rex.W != 0;
    return is_near_branch(insn) && (attributes & ZYDIS_ATTRIB_HAS_OPERANDSIZE) != 0 && !has_rex_w;
}

bool is_indirect_branch_through_fs_or_gs(const Insn& insn) {
    const auto& operand = insn.operands[0];
    const bool is_indirect_branch = (insn.info.mnemonic == ZYDIS_MNEMONIC_JMP ||
                                     insn.info.mnemonic == ZYDIS_MNEMONIC_CALL) &&
                                    operand.type == ZYDIS_OPERAND_TYPE_MEMORY;
    return is_indirect_branch &&
           (operand.mem.segment == ZYDIS_REGISTER_FS || operand.mem.segment == ZYDIS_REGISTER_GS);
}

// Why the instruction cannot be probed, or nullopt when it can.
std::optional<std::string_view> refusal_reason(const Insn& insn) {
    switch (insn.info.mnemonic) {
        case ZYDIS_MNEMONIC_INT3: return "is the program's own breakpoint";
        case ZYDIS_MNEMONIC_INT:
            if (insn.info.raw.imm[0].value.u == 3) {
                return "is the program's own breakpoint";
            }
            return "raises a software interrupt";
        case ZYDIS_MNEMONIC_INT1:
        case ZYDIS_MNEMONIC_INTO: return "raises its own exception";
        case ZYDIS_MNEMONIC_IRET:
        case ZYDIS_MNEMONIC_IRETD:
        case ZYDIS_MNEMONIC_IRETQ:
        case ZYDIS_MNEMONIC_SYSENTER:
        case ZYDIS_MNEMONIC_SYSEXIT: return "changes the code segment";
        case ZYDIS_MNEMONIC_XBEGIN:
        case ZYDIS_MNEMONIC_XABORT:
        case ZYDIS_MNEMONIC_XEND: return "is part of a transaction that our trap would abort";
        case ZYDIS_MNEMONIC_HLT: return "is privileged";
        default: break;
    }
    if (insn.info.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) {
        return "is a far transfer, which changes the code segment";
    }
    if ((insn.info.attributes & ZYDIS_ATTRIB_IS_PRIVILEGED) != 0) {
        return "is privileged";
    }
    if (is_segment_push_or_pop(insn)) {
        return "moves a segment register";
    }
    if (has_vendor_dependent_operand_size(insn)) {
        return "has an operand-size prefix, whose meaning on a near branch differs between Intel "
               "and AMD";
    }
    if (is_indirect_branch_through_fs_or_gs(insn)) {
        return "reads its target through fs/gs, whose base is not in pt_regs";
    }
    return std::nullopt;
}

EmulationKind push_kind(const Insn& insn) {
    if (insn.info.operand_width != 64) {
        return EmulationKind::None;
    }
    if (is_operand_register_of_class(insn, ZYDIS_REGCLASS_GPR64)) {
        return EmulationKind::PushReg;
    }
    if (insn.operands[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
        return EmulationKind::PushImm;
    }
    return EmulationKind::None;  // push r/m64 from memory: the copy is exact
}

EmulationKind pop_kind(const Insn& insn) {
    const bool is_pop_gpr64 =
        insn.info.operand_width == 64 && is_operand_register_of_class(insn, ZYDIS_REGCLASS_GPR64);
    return is_pop_gpr64 ? EmulationKind::PopReg : EmulationKind::None;
}

EmulationKind branch_kind(const Insn& insn, EmulationKind relative, EmulationKind indirect) {
    return insn.is_relative_branch() ? relative : indirect;
}

EmulationKind loop_kind(const Insn& insn) {
    // With 67, loop counts in ecx; left to the CPU (see the opening comment).
    return insn.info.address_width == 64 ? EmulationKind::Loop : EmulationKind::None;
}

EmulationKind emulation_kind(const Insn& insn) {
    switch (insn.info.mnemonic) {
        case ZYDIS_MNEMONIC_NOP:
        case ZYDIS_MNEMONIC_ENDBR64:
        case ZYDIS_MNEMONIC_ENDBR32:
        case ZYDIS_MNEMONIC_PAUSE: return EmulationKind::Nop;
        case ZYDIS_MNEMONIC_PUSH: return push_kind(insn);
        case ZYDIS_MNEMONIC_POP: return pop_kind(insn);
        case ZYDIS_MNEMONIC_JMP:
            return branch_kind(insn, EmulationKind::JmpRel, EmulationKind::JmpIndirect);
        case ZYDIS_MNEMONIC_CALL:
            return branch_kind(insn, EmulationKind::CallRel, EmulationKind::CallIndirect);
        case ZYDIS_MNEMONIC_RET: return EmulationKind::Ret;
        case ZYDIS_MNEMONIC_LOOP:
        case ZYDIS_MNEMONIC_LOOPE:
        case ZYDIS_MNEMONIC_LOOPNE: return loop_kind(insn);
        case ZYDIS_MNEMONIC_JRCXZ:
        case ZYDIS_MNEMONIC_JECXZ: return EmulationKind::Loop;
        default: break;
    }
    return jcc_condition(insn) ? EmulationKind::JccRel : EmulationKind::None;
}

}  // namespace

Result<ProbeInsn> analyze_probe_insn(const Insn& insn) {
    if (auto reason = refusal_reason(insn)) {
        return make_error(Errc::UnprobeableInstruction,
                          fmt::format("at {:#x}: '{}' {}", insn.address, disassemble(insn),
                                      *reason));
    }
    ProbeInsn probe;
    probe.insn = insn;
    probe.emulation = emulation_kind(insn);
    probe.strategy =
        probe.emulation == EmulationKind::None ? Strategy::Boost : Strategy::Emulate;
    return probe;
}

}  // namespace ukp::x86
