// Relocating instructions: producing code at a new address that does what the
// original did at its old one.
//
// Facts this relies on:
// - A RIP-relative operand addresses next_ip + disp32.  At the new place the
//   same absolute address needs disp32' = disp32 + (old_next - new_next); it
//   must fit in 32 signed bits (the "s32 displacement" constraint), else
//   Errc::OutOfRange.  Hence out-of-line memory is allocated within +-2 GiB.
// - Relative branches keep their absolute target: `jmp rel8 -> jmp rel32`,
//   `jcc rel8 -> jcc rel32` (0F 80+cc), `call rel32` -> push of the ORIGINAL
//   return address followed by `jmp rel32`, so the callee returns to the
//   original code, not to the copy.  `loop`/`jrcxz` (rel8 only) become a
//   short branch over a `jmp rel32`.
// - Everything else is position independent and is copied verbatim.  An
//   indirect call copied this way (`call rax`, `call [rip+x]`) returns into
//   the copy, which is why analyze_probe_insn emulates those instead.
// - Instructions that must not be copied at all (int3, int1, far transfers,
//   xbegin) are refused by analyze_probe_insn, not here; relocate() only
//   refuses (Errc::UnprobeableInstruction) a relative immediate it has no
//   rewrite for, such as xbegin's, rather than copy a stale target.
#pragma once

#include <cstdint>
#include <span>

#include "arch/x86_64/decoder.hpp"

namespace ukp::x86 {

// Upper bound of what relocate() writes for one instruction.
inline constexpr std::size_t max_relocated_length = 32;
inline constexpr std::size_t jmp_rel32_length = 5;

// Writes the relocated form of `insn`, to be placed at `new_address`, into `out`
// (at least max_relocated_length bytes).  Returns the number of bytes written.
[[nodiscard]] Result<std::size_t> relocate(const Insn& insn, std::uint64_t new_address,
                                           std::span<std::uint8_t> out);

// Writes `jmp rel32` (E9 disp32) placed at `from` jumping to `to`.
// Errc::OutOfRange when the distance does not fit in 32 signed bits.
[[nodiscard]] Result<std::size_t> emit_jmp_rel32(std::uint64_t from, std::uint64_t to,
                                                 std::span<std::uint8_t> out);

}  // namespace ukp::x86
