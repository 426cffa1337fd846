// x86-64 sizes and types the generic engine stores without looking inside.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "arch/x86_64/optimizer_analysis.hpp"
#include "arch/x86_64/probe_insn.hpp"
#include "arch/x86_64/trampoline.hpp"

namespace ukp::arch {

inline constexpr std::size_t max_insn_length = 15;
// int3 (CC): one byte, so arming and disarming are single-byte writes that
// another core sees whole.
inline constexpr std::array<std::uint8_t, 1> breakpoint_bytes{0xCC};

// Slot layout (one cache-line pair per probe point):
//   [0, 64)    boost form: relocated instruction; jmp rel32 -> next original instruction
//   [64, 128)  post form:  relocated instruction; int3 (post trap)
// A relocated instruction is at most 32 bytes (x86::max_relocated_length).
inline constexpr std::size_t slot_size = 128;
inline constexpr std::size_t post_form_offset = 64;

struct PreparedInsn {
    x86::ProbeInsn probe;
    // Length of the relocated copy in each form, set by build_slot.
    std::uint8_t boost_copy_length = 0;
    std::uint8_t post_copy_length = 0;
};

// An optimized probe: the jump's length, the region it displaces and where
// each displaced instruction lives in the stub.
inline constexpr std::size_t optimized_jump_length = x86::optimized_jump_length;
inline constexpr std::uint8_t optimized_jump_first_byte = 0xE9;  // jmp rel32
// How far a pre-handler of an optimized probe may lower regs.sp and still
// redirect execution (see trampoline.cpp).
inline constexpr std::uint64_t handler_stack_allowance = x86::handler_stack_allowance;

struct OptimizedRegion {
    x86::DisplacedRegion region;
    x86::StubLayout layout;
    std::array<std::uint8_t, 32> original{};  // the region's original bytes
    bool at_function_entry = false;
    bool with_post_handler = false;
    bool direct_callers = true;  // plan_optimization's parameter
    // The point has a return probe's entry: its stub continues with
    // `jmp [rsp - 8]` so that the function can be entered by a landing call
    // (return_trampoline.cpp).  Set by the optimizer at a function's entry.
    bool with_return_call = false;
};

// Small accessors the trap path calls on every hit, inline.
[[nodiscard]] inline std::size_t insn_length(const PreparedInsn& insn) noexcept { return insn.probe.insn.length; }
[[nodiscard]] inline bool is_emulated(const PreparedInsn& insn) noexcept {
    return insn.probe.strategy == x86::Strategy::Emulate;
}
[[nodiscard]] inline std::uint64_t instruction_pointer(const pt_regs& regs) noexcept { return regs.ip; }
inline void set_instruction_pointer(pt_regs& regs, std::uint64_t address) noexcept { regs.ip = address; }

[[nodiscard]] inline std::uint64_t trampoline_entry(std::uint64_t stub) noexcept { return x86::stub_entry(stub); }

// The stub's data word names the point; its low bits say what the stub is:
// with_return_call, and then whether the function has no direct callers
// (so that the narrow return trampoline will do).
inline constexpr std::uintptr_t stub_tag_return_call = x86::stub_tag_return_call;
inline constexpr std::uintptr_t stub_tag_narrow_return = x86::stub_tag_narrow_return;
inline constexpr std::uintptr_t stub_tag_mask = x86::stub_tag_mask;
// In a with_return_call stub, where the relocated region begins, given
// the continuation a body got (the `jmp [rsp - 8]` before it).
[[nodiscard]] inline std::uint64_t relocated_region_after_return_call(std::uint64_t continuation) noexcept {
    return continuation + x86::stub_return_call_jump_length;
}
// Completes the backup an optimized body passes (trampoline.cpp) with the
// flags and sp it leaves out, from the body's frame; for a path that needs
// the backup whole after a handler may have changed `regs`.
inline void complete_optimized_backup(const pt_regs* regs, pt_regs* backup) noexcept {
    const auto* flags = reinterpret_cast<const std::uint64_t*>(regs + 1);
    backup->flags = *flags;
    backup->sp = reinterpret_cast<std::uint64_t>(flags) + x86::body_sp_above_flags;
}
// Whether such a stub's data word has stub_tag_narrow_return (the function
// has no direct callers), given the continuation.
[[nodiscard]] inline bool is_narrow_return_call(std::uint64_t continuation) noexcept {
    return (*reinterpret_cast<const std::uint64_t*>(x86::stub_data_address(continuation)) &
            x86::stub_tag_narrow_return) != 0;
}
// Where that jmp reads its target, given the sp the function is entered with.
[[nodiscard]] inline std::uint64_t* return_call_target_word(std::uint64_t sp) noexcept {
    return reinterpret_cast<std::uint64_t*>(sp - 8);
}

[[nodiscard]] inline bool is_single_stepping(const pt_regs& regs) noexcept {
    constexpr std::uint64_t trap_flag = 1u << 8;
    return (regs.flags & trap_flag) != 0;
}

// Return probes (see backend.hpp and return_trampoline.cpp).
inline constexpr std::size_t return_landing_size = 32;  // landing call, landing, padding
inline constexpr std::size_t return_landing_offset = 11;  // of the landing (the hijacked return address) in its slot
inline constexpr std::size_t return_landings_per_block = 128;
inline constexpr std::size_t return_landing_blocks = 64;
inline constexpr std::size_t return_landing_count = return_landings_per_block * return_landing_blocks;
namespace detail {
struct ReturnLandings {
    std::atomic<std::uint64_t> code{0};  // landing k's slot: code + k * return_landing_size; 0 until made
    std::uint64_t* targets = nullptr;    // the real return addresses
    std::uint64_t* entries = nullptr;    // where landing calls go (the function's relocated entry)
    std::uint64_t* jumps = nullptr;      // the trampoline variant each landing goes to
};
extern ReturnLandings return_landings;
extern "C" char ukp_return_trampoline[] __attribute__((visibility("hidden")));
extern "C" char ukp_return_trampoline_by_ret[] __attribute__((visibility("hidden")));
extern "C" char ukp_return_trampoline_narrow[] __attribute__((visibility("hidden")));
extern "C" char ukp_return_trampoline_narrow_by_ret[] __attribute__((visibility("hidden")));
}  // namespace detail

[[nodiscard]] inline std::uint64_t return_trampoline_address() noexcept {
    return reinterpret_cast<std::uint64_t>(detail::ukp_return_trampoline);
}
// `call` pushed the return address: at the first instruction it is [rsp].
[[nodiscard]] inline std::uint64_t return_address_slot_at_entry(const pt_regs& regs) noexcept { return regs.sp; }
// `ret` popped it: the trampoline's pt_regs.sp is one word above the slot.
[[nodiscard]] inline std::uint64_t return_address_slot_at_return(const pt_regs& regs) noexcept { return regs.sp - 8; }
[[nodiscard]] inline std::uint64_t return_landing_address(std::size_t index) noexcept {
    return detail::return_landings.code.load(std::memory_order_relaxed) + index * return_landing_size +
           return_landing_offset;
}
// Inside the landings' code (a landing or its landing call).
[[nodiscard]] inline bool is_in_return_landings(std::uint64_t address) noexcept {
    std::uint64_t code = detail::return_landings.code.load(std::memory_order_acquire);
    return code != 0 && address - code < return_landing_count * return_landing_size;
}
[[nodiscard]] inline bool is_return_hijack(std::uint64_t address) noexcept {
    return address == return_trampoline_address() || is_in_return_landings(address);
}
// The return trampoline variant a landing jumps to: narrow or full, and
// leaving with ret (the function was entered by the landing's call) or jmp.
[[nodiscard]] inline std::uint64_t return_trampoline_variant(bool narrow, bool by_ret) noexcept {
    const char* variant = narrow ? (by_ret ? detail::ukp_return_trampoline_narrow_by_ret
                                           : detail::ukp_return_trampoline_narrow)
                                 : (by_ret ? detail::ukp_return_trampoline_by_ret : detail::ukp_return_trampoline);
    return reinterpret_cast<std::uint64_t>(variant);
}
// Stores the real return address for landing `index` and returns the
// landing's address.  The trampoline variant it goes on to is the caller's
// to set before the function can return: leave_landing_by_jump() or
// enter_by_landing_call().
[[nodiscard]] inline std::uint64_t return_landing_target(std::size_t index, std::uint64_t return_address) noexcept {
    detail::return_landings.targets[index] = return_address;
    return return_landing_address(index);
}
inline void leave_landing_by_jump(std::size_t index, bool narrow) noexcept {
    detail::return_landings.jumps[index] = return_trampoline_variant(narrow, false);
}
// Both: the real return address and the variant that leaves by jmp.
[[nodiscard]] inline std::uint64_t return_landing(std::size_t index, std::uint64_t return_address,
                                                  bool narrow) noexcept {
    leave_landing_by_jump(index, narrow);
    return return_landing_target(index, return_address);
}
// The return trampolines' code (a thread single-stepping there is in ours).
[[nodiscard]] bool is_in_return_trampoline(std::uint64_t pc) noexcept;
// For an optimized entry whose stub continues with `jmp [rsp - 8]`: where
// to jump so that the function is entered by landing `index`'s call, which
// goes on at `continuation`.  The trampoline then leaves with ret; `narrow`
// as given to return_landing() (passed again rather than read back from
// the table just written: the load waited for that store).
[[nodiscard]] inline std::uint64_t enter_by_landing_call(std::size_t index, std::uint64_t continuation,
                                                         bool narrow) noexcept {
    auto& landings = detail::return_landings;
    landings.entries[index] = continuation;
    landings.jumps[index] = return_trampoline_variant(narrow, true);
    return landings.code.load(std::memory_order_relaxed) + index * return_landing_size;
}
}  // namespace ukp::arch
