// Can a probe be optimized: replaced by a 5-byte `jmp rel32` to a trampoline
// instead of an int3?  Decided on the original bytes of the whole function.
//
// The jump overwrites the displaced code region (DCR): the whole
// instructions starting at the probe address that cover at least 5 bytes.
// It is safe only if (the kernel's optprobe rules, plus ours):
// - every DCR instruction can be relocated (relocate() accepts it);
// - the DCR ends inside the function (the symbol's size bounds it), and
//   no ret/jmp/ud2 ends the code before its 5th byte (what follows may be
//   padding or another function);
// - the DCR holds no call and no syscall: a thread that called out of the
//   middle of the DCR, or waits in a syscall there, would return into the
//   middle of the jump;
// - no relative branch anywhere in the function (decoded linearly from its
//   start to its end) lands inside the DCR after its first byte, and no DCR
//   branch targets the DCR itself;
// - the function has no indirect jump whose targets could be inside it (a
//   jump table).  `jmp qword ptr [rip+disp]` (a tail call through the GOT)
//   leaves the function and is allowed; `jmp reg` and indexed memory forms
//   are not;
// - the whole function decodes (data or padding mid-function would hide
//   branches).  Trailing int3/nop padding after the last `ret`/`jmp` is fine:
//   it is not code, so a probe there is NotInFunction.
// xbegin's relative abort target counts as a branch target.
// A function shorter than 5 bytes after the probe keeps the int3 path.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "arch/x86_64/decoder.hpp"

namespace ukp::x86 {

inline constexpr std::size_t optimized_jump_length = 5;  // E9 rel32

enum class OptimizeBlocker : std::uint8_t {
    None,
    TooShort,              // fewer than 5 bytes of whole instructions before the code ends
                           // (the function's end, or a ret/jmp/ud2)
    UndecodableFunction,   // the function does not decode from start to end
    UnrelocatableInsn,     // a DCR instruction relocate() refuses
    CallInRegion,          // a call (or syscall) inside the DCR
    BranchIntoRegion,      // a branch targets the DCR after its first byte
    IndirectJump,          // an indirect jump that may target the function
    NotInFunction,         // the probe is outside the function, not on an instruction
                           // boundary, or in its trailing padding
};

[[nodiscard]] std::string_view describe(OptimizeBlocker blocker) noexcept;

struct DisplacedRegion {
    std::uint64_t start = 0;
    std::size_t length = 0;       // >= optimized_jump_length, whole instructions
    std::vector<Insn> insns;
    // Whether any instruction of the function touches opmask registers or
    // EVEX state; if none does, a trampoline need not preserve them there.
    bool function_uses_avx512 = true;
};

struct OptimizeCheck {
    OptimizeBlocker blocker = OptimizeBlocker::None;
    std::string detail;  // names the instruction and address that blocks, e.g. "jz 0x...+3 at 0x..."
    DisplacedRegion region;
    [[nodiscard]] bool can_optimize() const { return blocker == OptimizeBlocker::None; }
};

// `function_code` holds the function's original bytes (no breakpoints),
// starting at `function_start`; its size is the symbol's size.
// `probed`, when given, is the instruction at `probe_address` decoded
// already (with its operands) and accepted by analyze_probe_insn(); it is
// used if its bytes are those of the code there, and spares a decode.
[[nodiscard]] OptimizeCheck check_optimizable(std::span<const std::uint8_t> function_code,
                                              std::uint64_t function_start, std::uint64_t probe_address,
                                              const Insn* probed = nullptr);

// Writes the DCR relocated to `new_address`, followed by `jmp rel32` to
// region.start + region.length.  Returns bytes written.  `out` must hold at
// least region.insns.size() * max_relocated_length + jmp_rel32_length.
[[nodiscard]] Result<std::size_t> relocate_region(const DisplacedRegion& region, std::uint64_t new_address,
                                                  std::span<std::uint8_t> out);

// What arch::direct_branch_targets (arch/backend.hpp) says: every address
// in [lowest, highest) that a call/jmp/jcc rel32 or rel8 starting in the
// first `scan_length` bytes of `code` (mapped at `start`) would go to.
[[nodiscard]] std::vector<std::uint64_t> direct_branch_targets(std::span<const std::uint8_t> code,
                                                               std::uint64_t start, std::size_t scan_length,
                                                               std::uint64_t lowest, std::uint64_t highest);

}  // namespace ukp::x86
