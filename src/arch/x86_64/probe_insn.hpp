// How the instruction under a probe is executed after the handlers ran: the
// kernel's arch_specific_insn, decided once at registration.
//
// Two strategies, both without a single-step trap:
// - Emulate: the trap handler computes the instruction's effect on the saved
//   registers (and the stack) itself.  Used for nops, push/pop, relative
//   jmp/jcc/call, ret, indirect jmp/call, loop/jrcxz: copies of those would be
//   wrong (they depend on RIP) or slower than doing it in the handler.
// - Boost: run a relocated copy in an out-of-line (XOL) slot followed by
//   `jmp rel32` back to the next original instruction; with a post-handler
//   the copy is followed by `int3` instead, and the second trap runs it.
// Instructions refused (Errc::UnprobeableInstruction, message names the
// mnemonic): int3 (CC, CD 03: it is the program's own breakpoint), int1
// (F1), into, int n, far jmp/call/ret, iret, sysenter/sysexit, xbegin/xabort/xend
// (a transaction would abort on our trap), hlt, and privileged instructions.
// Also refused: push/pop fs/gs; indirect jmp/call through an fs/gs-based
// memory operand (the segment base is not in pt_regs); and near branches with
// an operand-size prefix but no REX.W (66 E8, 66 C3, ...), which Intel and AMD
// decode differently.
#pragma once

#include <cstdint>
#include <span>

#include "arch/x86_64/decoder.hpp"
#include "ukprobes/pt_regs.h"

namespace ukp::x86 {

enum class Strategy : std::uint8_t { Boost, Emulate };

enum class EmulationKind : std::uint8_t {
    None,          // Strategy::Boost
    Nop,           // nop, nop r/m, endbr64, endbr32, pause
    PushReg,       // push r64
    PushImm,       // push imm8/imm32 (sign-extended to 64 bits)
    PopReg,        // pop r64
    JmpRel,        // jmp rel8/rel32
    JccRel,        // jcc rel8/rel32
    CallRel,       // call rel32
    Ret,           // ret, ret imm16
    JmpIndirect,   // jmp r/m64 (register or memory operand, RIP-relative included)
    CallIndirect,  // call r/m64
    Loop,          // loop, loope, loopne, jrcxz, jecxz
};

struct ProbeInsn {
    Insn insn;
    Strategy strategy = Strategy::Boost;
    EmulationKind emulation = EmulationKind::None;
};

// Decides how the instruction is executed; refuses what cannot be probed.
[[nodiscard]] Result<ProbeInsn> analyze_probe_insn(const Insn& insn);

// Memory the emulator reads and writes: the probed thread's stack and, for
// indirect branches through memory, the pointer.  A false return means the
// access would fault; the emulator then changes nothing.
struct MemoryAccess {
    bool (*read)(std::uint64_t address, void* out, std::size_t size, void* context) = nullptr;
    bool (*write)(std::uint64_t address, const void* in, std::size_t size, void* context) = nullptr;
    void* context = nullptr;
};

enum class EmulationStatus : std::uint8_t {
    Done,        // regs (and memory) now hold the state after the instruction
    MemoryFault  // an access would fault; regs untouched; run the copy to fault naturally
};

// Applies the instruction's effect to `regs`.  regs.ip must equal
// probe.insn.address on entry; on Done it holds the next instruction to run.
// Precondition: probe.strategy == Strategy::Emulate.
[[nodiscard]] EmulationStatus emulate(const ProbeInsn& probe, pt_regs& regs, const MemoryAccess& memory);

}  // namespace ukp::x86
