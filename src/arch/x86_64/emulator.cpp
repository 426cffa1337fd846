// Emulating the probed instruction on the saved registers.
//
// Facts this relies on:
// - Every emulated instruction uses a 64-bit stack slot: analyze_probe_insn
//   leaves 16-bit push/pop to a boosted copy.  push decrements rsp by 8 and
//   then stores; `push rsp` stores the value rsp had before the decrement.
//   pop loads from rsp and then increments it, except that `pop rsp` leaves
//   rsp equal to the loaded value (the load is the last write).
// - `ret imm16` pops the return address, then releases imm16 more bytes.
// - call pushes the address of the instruction after the ORIGINAL call, so
//   the callee returns into the original code.  For `call [rsp+8]` the
//   operand is evaluated before the push moves rsp.
// - A memory operand's address is base + index*scale + disp, wrapped to the
//   address width (32 bits with the 67 prefix).  RIP as a base means the
//   address of the next instruction.  fs/gs-based operands were refused by
//   the analysis: their bases are not in pt_regs.
// - Jcc conditions come in pairs: an even condition code tests a flag
//   combination and the next odd one is its negation.
// - loop decrements rcx without touching the flags and branches while it is
//   not zero (loope/loopne additionally require ZF set/clear); jrcxz and
//   jecxz test rcx/ecx without changing it.  The 67-prefixed loop forms are
//   boosted, so every loop here counts in the full rcx.
// - None of these instructions changes RFLAGS.
// - Failure atomicity: the result is computed on a copy of the registers,
//   memory is read before the only write (a push), and the copy is committed
//   after the write succeeded.  A fault therefore leaves regs untouched, and
//   at most the single write (which failed) was attempted.
#include "arch/x86_64/probe_insn.hpp"

#include <cstdlib>

namespace ukp::x86 {

namespace {

constexpr std::uint64_t stack_slot_size = 8;

constexpr std::uint64_t carry_flag = 0x1;
constexpr std::uint64_t parity_flag = 0x4;
constexpr std::uint64_t zero_flag = 0x40;
constexpr std::uint64_t sign_flag = 0x80;
constexpr std::uint64_t overflow_flag = 0x800;

// The pt_regs field holding a general-purpose register of any width.
unsigned long pt_regs::*register_field(ZydisRegister reg) {
    switch (ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, reg)) {
        case ZYDIS_REGISTER_RAX: return &pt_regs::ax;
        case ZYDIS_REGISTER_RCX: return &pt_regs::cx;
        case ZYDIS_REGISTER_RDX: return &pt_regs::dx;
        case ZYDIS_REGISTER_RBX: return &pt_regs::bx;
        case ZYDIS_REGISTER_RSP: return &pt_regs::sp;
        case ZYDIS_REGISTER_RBP: return &pt_regs::bp;
        case ZYDIS_REGISTER_RSI: return &pt_regs::si;
        case ZYDIS_REGISTER_RDI: return &pt_regs::di;
        case ZYDIS_REGISTER_R8: return &pt_regs::r8;
        case ZYDIS_REGISTER_R9: return &pt_regs::r9;
        case ZYDIS_REGISTER_R10: return &pt_regs::r10;
        case ZYDIS_REGISTER_R11: return &pt_regs::r11;
        case ZYDIS_REGISTER_R12: return &pt_regs::r12;
        case ZYDIS_REGISTER_R13: return &pt_regs::r13;
        case ZYDIS_REGISTER_R14: return &pt_regs::r14;
        case ZYDIS_REGISTER_R15: return &pt_regs::r15;
        default: std::abort();  // analyze_probe_insn admits general-purpose registers only
    }
}

// The value of a general-purpose register at its own width (eax: low 32 bits).
std::uint64_t register_value(const pt_regs& regs, ZydisRegister reg) {
    const std::uint64_t full = regs.*register_field(reg);
    const auto width = ZydisRegisterGetWidth(ZYDIS_MACHINE_MODE_LONG_64, reg);
    return width >= 64 ? full : full & ((std::uint64_t{1} << width) - 1);
}

std::uint64_t effective_address(const Insn& insn, const ZydisDecodedOperand& operand,
                                const pt_regs& regs) {
    const auto& memory = operand.mem;
    std::uint64_t address = static_cast<std::uint64_t>(memory.disp.value);
    if (memory.base == ZYDIS_REGISTER_RIP || memory.base == ZYDIS_REGISTER_EIP) {
        address += insn.next_address();
    } else if (memory.base != ZYDIS_REGISTER_NONE) {
        address += register_value(regs, memory.base);
    }
    if (memory.index != ZYDIS_REGISTER_NONE) {
        address += register_value(regs, memory.index) * memory.scale;
    }
    return insn.info.address_width == 32 ? address & 0xFFFF'FFFFu : address;
}

bool read_u64(const MemoryAccess& memory, std::uint64_t address, std::uint64_t& value) {
    return memory.read(address, &value, sizeof(value), memory.context);
}

// Stores `value` in a new stack slot of `next`.  false: the store would fault.
bool push(const MemoryAccess& memory, pt_regs& next, std::uint64_t value) {
    const auto slot = next.sp - stack_slot_size;
    if (!memory.write(slot, &value, sizeof(value), memory.context)) {
        return false;
    }
    next.sp = slot;
    return true;
}

bool is_condition_true(std::uint8_t condition, std::uint64_t flags) {
    const bool carry = (flags & carry_flag) != 0;
    const bool parity = (flags & parity_flag) != 0;
    const bool zero = (flags & zero_flag) != 0;
    const bool sign = (flags & sign_flag) != 0;
    const bool overflow = (flags & overflow_flag) != 0;
    bool holds = false;
    switch (condition >> 1) {
        case 0: holds = overflow; break;                   // jo / jno
        case 1: holds = carry; break;                      // jb / jae
        case 2: holds = zero; break;                       // je / jne
        case 3: holds = carry || zero; break;              // jbe / ja
        case 4: holds = sign; break;                       // js / jns
        case 5: holds = parity; break;                     // jp / jnp
        case 6: holds = sign != overflow; break;           // jl / jge
        case 7: holds = zero || sign != overflow; break;   // jle / jg
        default: break;
    }
    return (condition & 1) != 0 ? !holds : holds;
}

bool emulate_push_register(const Insn& insn, const pt_regs& regs, pt_regs& next,
                           const MemoryAccess& memory) {
    return push(memory, next, register_value(regs, insn.operands[0].reg.value));
}

bool emulate_push_immediate(const Insn& insn, pt_regs& next, const MemoryAccess& memory) {
    // Zydis stores the immediate already sign-extended to 64 bits.
    return push(memory, next, insn.operands[0].imm.value.u);
}

bool emulate_pop_register(const Insn& insn, const pt_regs& regs, pt_regs& next,
                          const MemoryAccess& memory) {
    std::uint64_t value = 0;
    if (!read_u64(memory, regs.sp, value)) {
        return false;
    }
    next.sp = regs.sp + stack_slot_size;
    next.*register_field(insn.operands[0].reg.value) = value;  // pop rsp: overrides the increment
    return true;
}

bool emulate_ret(const Insn& insn, const pt_regs& regs, pt_regs& next, const MemoryAccess& memory) {
    std::uint64_t return_address = 0;
    if (!read_u64(memory, regs.sp, return_address)) {
        return false;
    }
    const auto released = insn.info.raw.imm[0].size != 0 ? insn.info.raw.imm[0].value.u : 0;
    next.sp = regs.sp + stack_slot_size + released;
    next.ip = return_address;
    return true;
}

// The target of jmp/call r/m64, read through `memory` for a memory operand.
bool indirect_target(const Insn& insn, const pt_regs& regs, const MemoryAccess& memory,
                     std::uint64_t& target) {
    const auto& operand = insn.operands[0];
    if (operand.type == ZYDIS_OPERAND_TYPE_REGISTER) {
        target = register_value(regs, operand.reg.value);
        return true;
    }
    return read_u64(memory, effective_address(insn, operand, regs), target);
}

bool emulate_jmp_indirect(const Insn& insn, const pt_regs& regs, pt_regs& next,
                          const MemoryAccess& memory) {
    std::uint64_t target = 0;
    if (!indirect_target(insn, regs, memory, target)) {
        return false;
    }
    next.ip = target;
    return true;
}

bool emulate_call_indirect(const Insn& insn, const pt_regs& regs, pt_regs& next,
                           const MemoryAccess& memory) {
    std::uint64_t target = 0;
    if (!indirect_target(insn, regs, memory, target) || !push(memory, next, insn.next_address())) {
        return false;
    }
    next.ip = target;
    return true;
}

bool emulate_call_relative(const Insn& insn, pt_regs& next, const MemoryAccess& memory) {
    if (!push(memory, next, insn.next_address())) {
        return false;
    }
    next.ip = insn.branch_target();
    return true;
}

void emulate_loop(const Insn& insn, const pt_regs& regs, pt_regs& next) {
    const bool zero = (regs.flags & zero_flag) != 0;
    bool taken = false;
    switch (insn.info.mnemonic) {
        case ZYDIS_MNEMONIC_JRCXZ: taken = regs.cx == 0; break;
        case ZYDIS_MNEMONIC_JECXZ: taken = static_cast<std::uint32_t>(regs.cx) == 0; break;
        case ZYDIS_MNEMONIC_LOOP: next.cx = regs.cx - 1; taken = next.cx != 0; break;
        case ZYDIS_MNEMONIC_LOOPE: next.cx = regs.cx - 1; taken = next.cx != 0 && zero; break;
        case ZYDIS_MNEMONIC_LOOPNE: next.cx = regs.cx - 1; taken = next.cx != 0 && !zero; break;
        default: std::abort();  // analyze_probe_insn classifies only these as Loop
    }
    if (taken) {
        next.ip = insn.branch_target();
    }
}

void emulate_jcc(const Insn& insn, const pt_regs& regs, pt_regs& next) {
    const auto condition = jcc_condition(insn);
    if (!condition) {
        std::abort();  // analyze_probe_insn classifies only jcc as JccRel
    }
    if (is_condition_true(*condition, regs.flags)) {
        next.ip = insn.branch_target();
    }
}

// Applies the instruction to `next` (a copy of `regs` with ip at the next
// instruction).  false: a memory access would fault.
bool apply(const ProbeInsn& probe, const pt_regs& regs, pt_regs& next, const MemoryAccess& memory) {
    const auto& insn = probe.insn;
    switch (probe.emulation) {
        case EmulationKind::Nop: return true;
        case EmulationKind::PushReg: return emulate_push_register(insn, regs, next, memory);
        case EmulationKind::PushImm: return emulate_push_immediate(insn, next, memory);
        case EmulationKind::PopReg: return emulate_pop_register(insn, regs, next, memory);
        case EmulationKind::JmpRel: next.ip = insn.branch_target(); return true;
        case EmulationKind::JccRel: emulate_jcc(insn, regs, next); return true;
        case EmulationKind::CallRel: return emulate_call_relative(insn, next, memory);
        case EmulationKind::Ret: return emulate_ret(insn, regs, next, memory);
        case EmulationKind::JmpIndirect: return emulate_jmp_indirect(insn, regs, next, memory);
        case EmulationKind::CallIndirect: return emulate_call_indirect(insn, regs, next, memory);
        case EmulationKind::Loop: emulate_loop(insn, regs, next); return true;
        case EmulationKind::None: break;
    }
    std::abort();  // precondition: probe.strategy == Strategy::Emulate
}

}  // namespace

EmulationStatus emulate(const ProbeInsn& probe, pt_regs& regs, const MemoryAccess& memory) {
    pt_regs next = regs;
    next.ip = probe.insn.next_address();
    if (!apply(probe, regs, next, memory)) {
        return EmulationStatus::MemoryFault;
    }
    regs = next;
    return EmulationStatus::Done;
}

}  // namespace ukp::x86
