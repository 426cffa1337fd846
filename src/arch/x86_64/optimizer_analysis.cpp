// Deciding whether a probe can be optimized, and relocating its displaced
// code region (DCR) next to the trampoline.
//
// Facts this relies on:
// - Instruction boundaries are only known by decoding forward from a known
//   one, the symbol's start.  We decode the whole function once, linearly,
//   and trust that it holds code only.  Compilers put jump tables in
//   .rodata, so data inside a function's symbol is rare; when a decode fails
//   we refuse rather than guess where code resumes.
// - Symbols may count alignment padding (int3 or nop forms) after the last
//   `ret`/`jmp`.  Such a tail is not code: decoding stops where it begins,
//   and bytes in it neither decode as branches nor can start a DCR.
// - Execution can only enter the middle of the DCR through (a) a branch
//   within the function, which we see in the linear decode, or (b) a return
//   into it, from a call or syscall inside the DCR.  An indirect jump with a
//   computed target (a switch's jump table: `jmp rax`, `jmp [rax*8+table]`)
//   could land anywhere, so it blocks the whole function.  A
//   `jmp qword ptr [rip+disp]` only reads a pointer slot (the GOT of a tail
//   call) and is taken to leave the function.  Branches from other
//   functions into this one are not looked for: compilers do not emit them
//   except to symbol starts, and the kernel makes the same bet.
// - A relative immediate of an instruction that is not a branch (xbegin's
//   abort target) is a way in too, so it counts as a branch target.
// - C++ landing pads are entered by the unwinder, not by a branch; they
//   begin after a call or a jump, which a DCR may not pass (calls refuse,
//   jmp/ret end a DCR only at or beyond 5 bytes).  Revisit if that
//   assumption is ever seen to fail: the fix is reading .gcc_except_table.
// - A DCR ending in a `ret`/`jmp`/`ud2` before its 5th byte would
//   overwrite whatever follows, which may be padding, a landing pad, or the
//   next function: refused as too short, as the kernel does.
// - Threads preempted or interrupted by a signal inside the DCR are the
//   patching protocol's problem (the engine's), not this analysis'; a thread
//   blocked in a syscall inside the DCR would wait there unboundedly, so
//   syscall counts as a call here.
// - Whether each DCR instruction relocates is tried for real: relocate() to
//   an address 256 MiB above the function, which exercises every rewrite
//   (rel8 -> rel32, displacement rebasing) the trampoline will need.  A
//   RIP-relative operand more than 1.75 GiB above the code could fail there
//   and succeed nearer: revisit if that is ever seen.
// - endbr64 may be displaced: user-space IBT is not enabled on Linux today.
//   Revisit when it is, as an indirect call must land on an endbr64.
#include "arch/x86_64/optimizer_analysis.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <expected>
#include <optional>

#include "arch/x86_64/probe_insn.hpp"
#include "arch/x86_64/relocator.hpp"

namespace ukp::x86 {

namespace {

constexpr std::uint8_t int3_opcode = 0xCC;
// Where the relocation trial places the DCR: far enough that every rel8
// must widen and every displacement changes, near enough to stay in range.
constexpr std::uint64_t relocation_trial_distance = 0x1000'0000;

struct Refusal {
    OptimizeBlocker blocker = OptimizeBlocker::None;
    std::string detail;
};

template <class T>
using Verdict = std::expected<T, Refusal>;

std::unexpected<Refusal> refuse(OptimizeBlocker blocker, std::string detail) {
    return std::unexpected(Refusal{blocker, std::move(detail)});
}

// "'jne 0x401002' at 0x401010": how details name an instruction.
std::string name_instruction(const Insn& insn) {
    return fmt::format("'{}' at {:#x}", disassemble(insn), insn.address);
}

bool is_padding(const Insn& insn) {
    const bool is_one_byte_int3 = insn.length == 1 && insn.bytes[0] == int3_opcode;
    return is_one_byte_int3 || insn.info.mnemonic == ZYDIS_MNEMONIC_NOP;
}

// ret, jmp (any form), ud2: execution never falls through to the next byte.
bool ends_control_flow(const Insn& insn) {
    const auto category = insn.info.meta.category;
    return category == ZYDIS_CATEGORY_RET || category == ZYDIS_CATEGORY_UNCOND_BR ||
           insn.info.mnemonic == ZYDIS_MNEMONIC_UD2;
}

// Instructions after which a thread may wait, with the next instruction's
// address saved as where it resumes.
bool returns_to_next_instruction(const Insn& insn) {
    return insn.info.meta.category == ZYDIS_CATEGORY_CALL ||
           insn.info.mnemonic == ZYDIS_MNEMONIC_SYSCALL;
}

bool is_indirect_jump(const Insn& insn) {
    return insn.info.mnemonic == ZYDIS_MNEMONIC_JMP && !insn.is_relative_branch();
}

// `jmp qword ptr [rip+disp]`: reads a pointer slot outside the code.
bool is_jump_through_rip_relative_slot(const Insn& insn) {
    const auto& operand = insn.operands[0];
    return operand.type == ZYDIS_OPERAND_TYPE_MEMORY && operand.mem.base == ZYDIS_REGISTER_RIP &&
           operand.mem.index == ZYDIS_REGISTER_NONE;
}

// The address a relative immediate points at: branch targets, and xbegin's
// abort handler, which is also a way into the code.
std::optional<std::uint64_t> relative_target(const Insn& insn) {
    if (insn.is_relative_branch()) {
        return insn.branch_target();
    }
    for (const auto& immediate : insn.info.raw.imm) {
        if (immediate.is_relative) {
            return insn.next_address() + static_cast<std::uint64_t>(immediate.value.s);
        }
    }
    return std::nullopt;
}

// Decoding from `offset` to the end finds only padding.
bool is_rest_padding(std::span<const std::uint8_t> code, std::uint64_t start, std::size_t offset,
                     Insn& scratch) {
    while (offset < code.size()) {
        if (!decode_into(code.subspan(offset), start + offset, scratch, false) ||
            !is_padding(scratch)) {
            return false;
        }
        offset += scratch.length;
    }
    return true;
}

struct RelativeTransfer {
    std::uint64_t address = 0;  // of the instruction
    std::uint64_t target = 0;
};

// What the linear decode of the whole function tells.
struct FunctionScan {
    std::uint64_t code_end = 0;  // trailing padding excluded
    std::vector<RelativeTransfer> transfers;
    std::optional<Insn> computed_jump;                // the first that may target the function
    std::optional<Insn> instruction_containing_probe; // when the probe is not a boundary
    bool uses_avx512 = false;  // an EVEX instruction or an opmask register anywhere
    // The instructions from the probe on, as far as a jump reaches (or the
    // code ends), decoded with their operands: the DCR's candidates.
    std::vector<Insn> from_probe;
    bool first_was_probed = false;  // from_probe[0] is the caller's `probed`
};

// Whether the instruction reads or writes AVX-512-only state (zmm16-31 and
// the upper halves of zmm, opmask registers).  All of that is caller-saved
// in the System V ABI and never carries an argument, so in a function that
// never touches it, it is dead at every instruction of the function.
bool uses_avx512_state(const Insn& insn) {
    if (insn.info.encoding == ZYDIS_INSTRUCTION_ENCODING_EVEX) return true;
    // Only VEX forms (kmov, kand, ...) name opmask registers otherwise; a
    // legacy instruction cannot, so its operands need not be looked at.
    if (insn.info.encoding == ZYDIS_INSTRUCTION_ENCODING_LEGACY) return false;
    for (std::size_t i = 0; i < insn.info.operand_count; ++i)
        if (insn.operands[i].type == ZYDIS_OPERAND_TYPE_REGISTER &&
            ZydisRegisterGetClass(insn.operands[i].reg.value) == ZYDIS_REGCLASS_MASK)
            return true;
    return false;
}

Verdict<FunctionScan> scan_function(std::span<const std::uint8_t> code, std::uint64_t start,
                                    std::uint64_t probe_address, const Insn* probed) {
    FunctionScan scan;
    // Most instructions are only classified here, which needs no operands;
    // those whose checks read operands are decoded again with them.
    Insn scratch;
    std::size_t covered_from_probe = 0;
    scan.from_probe.reserve(2);  // what most regions hold; an Insn is over a kilobyte
    std::size_t offset = 0;
    while (offset < code.size()) {
        const auto bytes = code.subspan(offset);
        const bool in_region =
            start + offset >= probe_address && covered_from_probe < optimized_jump_length;
        const bool is_probed = probed != nullptr && start + offset == probe_address &&
                               probed->address == probe_address && probed->length <= bytes.size() &&
                               std::ranges::equal(probed->code(), bytes.first(probed->length));
        if (is_probed) {
            scan.first_was_probed = true;
        } else if (auto decoded = decode_into(bytes, start + offset, scratch, in_region); !decoded) {
            return refuse(OptimizeBlocker::UndecodableFunction, decoded.error().message);
        }
        const Insn& insn = is_probed ? *probed : scratch;
        const bool needs_operands =
            is_indirect_jump(insn) || insn.info.encoding != ZYDIS_INSTRUCTION_ENCODING_LEGACY;
        if (needs_operands && !in_region) {
            if (auto decoded = decode_into(bytes, start + offset, scratch, true); !decoded) {
                return refuse(OptimizeBlocker::UndecodableFunction, decoded.error().message);
            }
        }
        if (in_region) {
            scan.from_probe.push_back(insn);
            covered_from_probe += insn.length;
        }
        if (insn.address < probe_address && insn.next_address() > probe_address) {
            scan.instruction_containing_probe = insn;
        }
        if (auto target = relative_target(insn)) {
            scan.transfers.push_back({insn.address, *target});
        }
        scan.uses_avx512 = scan.uses_avx512 || uses_avx512_state(insn);
        if (is_indirect_jump(insn) && !is_jump_through_rip_relative_slot(insn) &&
            !scan.computed_jump) {
            scan.computed_jump = insn;
        }
        offset += insn.length;
        if (ends_control_flow(insn) && is_rest_padding(code, start, offset, scratch)) {
            break;
        }
    }
    scan.code_end = start + offset;
    return scan;
}

// The whole instructions from the probe that cover the jump, from those
// the scan kept (it stopped keeping them where the code ends).
Verdict<DisplacedRegion> take_displaced_region(FunctionScan& scan, std::uint64_t probe_address) {
    DisplacedRegion region;
    region.start = probe_address;
    region.insns = std::move(scan.from_probe);
    for (const auto& insn : region.insns) {
        region.length += insn.length;
        if (ends_control_flow(insn) && region.length < optimized_jump_length) {
            return refuse(OptimizeBlocker::TooShort,
                          fmt::format("{} ends the code {} bytes after {:#x}; the jump needs {}",
                                      name_instruction(insn), region.length, probe_address,
                                      optimized_jump_length));
        }
    }
    if (region.length < optimized_jump_length) {
        return refuse(OptimizeBlocker::TooShort,
                      fmt::format("the code ends {} bytes after {:#x}; the jump needs {}",
                                  region.length, probe_address, optimized_jump_length));
    }
    return region;
}

// Every DCR instruction must be copyable to the trampoline.  The caller's
// `probed` instruction passed analyze_probe_insn() already, when the probe
// was prepared.
Verdict<void> check_region_instructions(const DisplacedRegion& region, bool first_was_probed) {
    std::array<std::uint8_t, max_relocated_length> scratch{};
    std::size_t offset = 0;
    for (const auto& insn : region.insns) {
        const bool analyzed = first_was_probed && &insn == &region.insns.front();
        if (!analyzed) {
            if (auto probe = analyze_probe_insn(insn); !probe) {
                return refuse(OptimizeBlocker::UnrelocatableInsn, probe.error().message);
            }
        }
        if (returns_to_next_instruction(insn)) {
            return refuse(OptimizeBlocker::CallInRegion,
                          fmt::format("{} would return into the jump", name_instruction(insn)));
        }
        const auto trial_address = region.start + relocation_trial_distance + offset;
        auto written = relocate(insn, trial_address, scratch);
        if (!written) {
            return refuse(OptimizeBlocker::UnrelocatableInsn, written.error().message);
        }
        offset += *written;
    }
    return {};
}

// No branch may land inside the DCR after its first byte, and none from
// the DCR may land in it at all (its copy would jump into the jump).
Verdict<void> check_branch_targets(const FunctionScan& scan, const DisplacedRegion& region,
                                   std::span<const std::uint8_t> code, std::uint64_t start) {
    const auto region_end = region.start + region.length;
    for (const auto& transfer : scan.transfers) {
        const bool is_from_region =
            transfer.address >= region.start && transfer.address < region_end;
        const auto lowest_forbidden = is_from_region ? region.start : region.start + 1;
        if (transfer.target < lowest_forbidden || transfer.target >= region_end) {
            continue;
        }
        auto insn = decode_one(code.subspan(transfer.address - start), transfer.address);
        const auto who = insn ? name_instruction(*insn) : fmt::format("at {:#x}", transfer.address);
        return refuse(OptimizeBlocker::BranchIntoRegion,
                      fmt::format("{} targets {:#x}, inside the displaced region [{:#x}, {:#x})",
                                  who, transfer.target, region.start, region_end));
    }
    return {};
}

Verdict<DisplacedRegion> analyze(std::span<const std::uint8_t> code, std::uint64_t start,
                                 std::uint64_t probe_address, const Insn* probed) {
    // 1. The probe lies in the function's bytes.
    if (probe_address < start || probe_address - start >= code.size()) {
        return refuse(OptimizeBlocker::NotInFunction,
                      fmt::format("{:#x} is outside the function [{:#x}, {:#x})", probe_address,
                                  start, start + code.size()));
    }
    // 2. The whole function decodes; collect its branches.
    auto scan = scan_function(code, start, probe_address, probed);
    if (!scan) {
        return std::unexpected(std::move(scan.error()));
    }
    // 3. The probe is on an instruction boundary, in code.
    if (scan->instruction_containing_probe) {
        return refuse(OptimizeBlocker::NotInFunction,
                      fmt::format("{:#x} is inside the instruction {}", probe_address,
                                  name_instruction(*scan->instruction_containing_probe)));
    }
    if (probe_address >= scan->code_end) {
        return refuse(OptimizeBlocker::NotInFunction,
                      fmt::format("{:#x} is in the padding after the function's code, which "
                                  "ends at {:#x}",
                                  probe_address, scan->code_end));
    }
    // 4. Whole instructions cover the jump, then each can move.
    auto region = take_displaced_region(*scan, probe_address);
    if (!region) {
        return region;
    }
    if (auto copyable = check_region_instructions(*region, scan->first_was_probed); !copyable) {
        return std::unexpected(std::move(copyable.error()));
    }
    // 5. Nothing enters the region except at its start.
    if (auto entries = check_branch_targets(*scan, *region, code, start); !entries) {
        return std::unexpected(std::move(entries.error()));
    }
    if (scan->computed_jump) {
        return refuse(OptimizeBlocker::IndirectJump,
                      fmt::format("{} may target any instruction of the function",
                                  name_instruction(*scan->computed_jump)));
    }
    region->function_uses_avx512 = scan->uses_avx512;
    return region;
}

}  // namespace

std::string_view describe(OptimizeBlocker blocker) noexcept {
    switch (blocker) {
        case OptimizeBlocker::None: return "nothing blocks the optimization";
        case OptimizeBlocker::TooShort: return "fewer than 5 bytes of code follow the probe";
        case OptimizeBlocker::UndecodableFunction: return "the function does not decode";
        case OptimizeBlocker::UnrelocatableInsn:
            return "a displaced instruction cannot be relocated";
        case OptimizeBlocker::CallInRegion: return "a call in the displaced region";
        case OptimizeBlocker::BranchIntoRegion: return "a branch targets the displaced region";
        case OptimizeBlocker::IndirectJump: return "an indirect jump may target the function";
        case OptimizeBlocker::NotInFunction:
            return "the probe is not on an instruction of the function";
    }
    return "unknown optimize blocker";
}

OptimizeCheck check_optimizable(std::span<const std::uint8_t> function_code,
                                std::uint64_t function_start, std::uint64_t probe_address,
                                const Insn* probed) {
    OptimizeCheck check;
    auto region = analyze(function_code, function_start, probe_address, probed);
    if (!region) {
        check.blocker = region.error().blocker;
        check.detail = std::move(region.error().detail);
        return check;
    }
    check.region = std::move(*region);
    return check;
}

Result<std::size_t> relocate_region(const DisplacedRegion& region, std::uint64_t new_address,
                                    std::span<std::uint8_t> out) {
    if (region.insns.empty()) {
        return make_error(Errc::InvalidArgument,
                          fmt::format("at {:#x}: the displaced region holds no instruction",
                                      region.start));
    }
    const auto needed = region.insns.size() * max_relocated_length + jmp_rel32_length;
    if (out.size() < needed) {
        return make_error(Errc::InvalidArgument,
                          fmt::format("at {:#x}: relocating the displaced region needs {} bytes "
                                      "of room, got {}",
                                      region.start, needed, out.size()));
    }
    std::size_t written = 0;
    for (const auto& insn : region.insns) {
        auto size = relocate(insn, new_address + written, out.subspan(written));
        if (!size) {
            return std::unexpected(std::move(size.error()));
        }
        written += *size;
    }
    // jmp back to the first instruction after the region.
    auto jump = emit_jmp_rel32(new_address + written, region.start + region.length,
                               out.subspan(written));
    if (!jump) {
        return std::unexpected(std::move(jump.error()));
    }
    return written + *jump;
}

std::vector<std::uint64_t> direct_branch_targets(std::span<const std::uint8_t> code, std::uint64_t start,
                                                 std::size_t scan_length, std::uint64_t lowest,
                                                 std::uint64_t highest) {
    std::vector<std::uint64_t> targets;
    const std::size_t size = code.size();
    auto add = [&](std::size_t end, std::int64_t displacement) {
        const std::uint64_t target = start + end + static_cast<std::uint64_t>(displacement);
        if (target >= lowest && target < highest) targets.push_back(target);
    };
    auto rel32 = [&](std::size_t at) {
        std::int32_t value;
        std::memcpy(&value, code.data() + at, sizeof value);
        return static_cast<std::int64_t>(value);
    };
    for (std::size_t i = 0; i < std::min(scan_length, size); ++i) {
        const std::uint8_t byte = code[i];
        if ((byte == 0xe8 || byte == 0xe9) && i + 5 <= size)  // call/jmp rel32
            add(i + 5, rel32(i + 1));
        else if (byte == 0x0f && i + 6 <= size && (code[i + 1] & 0xf0) == 0x80)  // jcc rel32 (a conditional tail call)
            add(i + 6, rel32(i + 2));
        if ((byte == 0xeb || (byte & 0xf0) == 0x70) && i + 2 <= size)  // jmp/jcc rel8
            add(i + 2, static_cast<std::int8_t>(code[i + 1]));
    }
    return targets;
}

}  // namespace ukp::x86
