// Optimized probes on x86-64: the jump, the per-probe stub and the shared
// trampoline bodies.
//
// A probe is optimized by replacing its displaced code region (DCR, >= 5
// bytes of whole instructions) with `jmp rel32` to a per-probe stub in slot
// memory within +-2 GiB:
//
//   stub:  .quad ProbePoint*                             read by the body at its return address - 19
//   entry: lea rsp, [rsp-0x80]          48 8d 64 24 80   step over the red zone
//          call qword ptr [rip+body]    ff 15 disp32     the body returns right after it
//          [at a return probe's entry: jmp qword ptr [rsp-8]  ff 64 24 f8 (return_trampoline.cpp)]
//          <first DCR instruction, relocated>
//          [with a post-handler:
//          jmp +8 (eb 08); .quad ProbePoint*; lea rsp, [rsp-0x80]; call qword ptr [rip+post_body]]
//          <rest of the DCR, relocated>
//          jmp rel32 -> end of the DCR   e9 disp32
//          ... body pointers at the end of the slot
//
// The bodies are static code of this library (trampoline.cpp).  They save
// the general registers and flags into a pt_regs, the vector state the
// program may have live (see below), call the C++ dispatcher, restore
// everything and continue at the address it returns with the stack pointer
// regs.sp: normally the relocated DCR in the stub; when a pre-handler
// returned non-zero, the regs.ip it chose.
//
// Vector state.  Our own dispatcher only touches xmm0-15 (baseline SSE2,
// whose legacy encoding leaves the upper bits of ymm/zmm alone); a user
// handler may call anything, including glibc's AVX2/EVEX string functions,
// which clobber ymm0-31, the opmask registers and (vzeroupper) the upper
// halves.  So the bodies read XINUSE (xgetbv with ecx=1) and save, with
// plain moves, exactly the components that are not in their initial state:
//   always          xmm0-15 (entry: xmm0-7) and MXCSR (mid-function only)
//   AVX (bit 2)     ymm0-15 (entry: ymm0-7)
//   ZMM_Hi256 (6)   zmm0-15 (entry: zmm0-7)
//   opmask (5)      k0-7 (mid-function only)
//   Hi16_ZMM (7)    zmm16-31 (mid-function only)
// At a function's entry the System V ABI makes every vector register
// caller-saved except the argument registers (x/y/zmm0-7) and MXCSR's
// control bits (callee-saved, so a handler restores them itself): the entry
// body saves only those.  It is used only where no code of the module calls
// the function directly (-fipa-ra callers keep values in caller-saved
// registers: arch/backend.hpp, plan_optimization); elsewhere an entry gets
// the middle body.  XSAVE is never used: on these machines it costs
// ~150 ns against ~10 ns for the moves.  Not preserved: the x87 register
// stack (a handler using long double at a probe inside x87 code could
// overflow it) and AMX tiles.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "arch/x86_64/optimizer_analysis.hpp"
#include "ukprobes/error.hpp"
#include "ukprobes/pt_regs.h"

namespace ukp::x86 {

// The user code and stack segments of x86-64 Linux (__USER_CS, __USER_DS),
// what pt_regs.cs and .ss hold on the int3 path.
inline constexpr std::uint64_t user_cs = 0x33;
inline constexpr std::uint64_t user_ss = 0x2b;

// How far below the probed code's stack pointer the body builds its frame:
// room for a pre-handler that lowers regs.sp (say, to push a return address)
// before redirecting; see trampoline.cpp.
inline constexpr std::uint64_t handler_stack_allowance = 1024 - 16;
// From the flags a body pushed (right above its pt_regs) to the probed
// code's sp: the flags word, the gap, the stub's return address and the
// red zone (trampoline.cpp).
inline constexpr std::uint64_t body_sp_above_flags = 8 + (handler_stack_allowance + 16) + 8 + 128;

enum class BodyKind : std::uint8_t { Entry, Middle, Post };

// Stub layout (bytes): each call into a body is
//   .quad ProbePoint*; lea rsp, [rsp-0x80]; call qword ptr [rip+body]
inline constexpr std::size_t stub_data_length = 8;
inline constexpr std::size_t stub_call_sequence = 8 + 5 + 6;  // data, lea, call
// `jmp qword ptr [rsp - 8]` after the pre-body call of a stub with a return
// call (arch::OptimizedRegion::with_return_call).
inline constexpr std::size_t stub_return_call_jump_length = 4;
// The low bits of the pre-body call's data word (the point is 8-byte aligned).
inline constexpr std::uintptr_t stub_tag_return_call = 1;    // the stub has that jmp
inline constexpr std::uintptr_t stub_tag_narrow_return = 2;  // and the function no direct callers
inline constexpr std::uintptr_t stub_tag_mask = 7;

// The stub for `region`, to live at `stub_address`.  `post_after_first`
// inserts the post-handler call after the first DCR instruction; `narrow`
// picks the bodies that leave k0-7 and zmm16-31 alone (the caller decides
// when that is safe: backend.cpp, build_trampoline).
// Errc::OutOfRange when a relocated operand cannot reach; InvalidArgument
// when it does not fit in `out`.
struct StubLayout;
// `data_tag` goes into the low bits of the pre-body call's data word;
// with arch::stub_tag_return_call the stub continues after that call with
// `jmp [rsp - 8]` (return_trampoline.cpp).
[[nodiscard]] Result<std::size_t> build_stub(const DisplacedRegion& region, std::uint64_t stub_address,
                                             const void* point, BodyKind pre_body, bool post_after_first,
                                             bool narrow, std::uintptr_t data_tag, std::span<std::uint8_t> out,
                                             StubLayout* layout);

// Where a thread enters a stub (after its first data word).
[[nodiscard]] inline std::uint64_t stub_entry(std::uint64_t stub_address) noexcept {
    return stub_address + stub_data_length;
}
// The data word naming the point, given the return address a body got.
[[nodiscard]] inline std::uint64_t stub_data_address(std::uint64_t return_address) noexcept {
    return return_address - stub_call_sequence;
}

// The 5 bytes that replace the DCR's first bytes: jmp rel32 -> stub entry.
[[nodiscard]] Result<std::array<std::uint8_t, optimized_jump_length>> jump_to_stub(std::uint64_t probe_address,
                                                                                   std::uint64_t stub_address);

// Where the bodies are, for grace periods (a thread there may be on its way
// back into some stub).
[[nodiscard]] bool is_in_trampoline_body(std::uint64_t pc) noexcept;

// The bodies read XINUSE with xgetbv(ecx=1); without it nothing is optimized.
[[nodiscard]] bool cpu_supports_trampolines() noexcept;

// Where in a stub `pc` is (for a fault in a relocated instruction): the
// original address of the instruction being executed, or 0.
struct StubLayout {
    std::uint64_t stub = 0;
    std::uint8_t copy_offset[8] = {};  // stub offset of each relocated DCR instruction
    std::uint8_t copy_length[8] = {};
    std::uint64_t original[8] = {};
    std::uint8_t original_length[8] = {};
    std::uint8_t count = 0;
};

}  // namespace ukp::x86

// The C++ side of the bodies (src/core/dispatch.cpp).  `regs` has every
// field but ip (orig_ax -1, cs and ss the user segments); `vectors` the
// saved xmm registers (64 bytes apart, `count` of them); `backup` the same
// general registers again (not flags, sp, ip, orig_ax, cs, ss), with
// arch::OptimizedHitFrame right below it; `point`
// the stub's data word (the ProbePoint); `continuation` where the stub goes
// on, the relocated region.  Returns where to continue.
extern "C" std::uint64_t ukp_optimized_pre_hit(pt_regs* regs, const std::uint8_t* vectors, unsigned count,
                                               pt_regs* backup, void* point, std::uint64_t continuation);
extern "C" std::uint64_t ukp_optimized_post_hit(pt_regs* regs, const std::uint8_t* vectors, unsigned count,
                                                pt_regs* backup, void* point, std::uint64_t continuation);
// The same for a return probe's entry (a stub with stub_tag_return_call).
extern "C" std::uint64_t ukp_optimized_return_call_hit(pt_regs* regs, const std::uint8_t* vectors, unsigned count,
                                                       pt_regs* backup, void* point, std::uint64_t continuation);
// A handler call made through the body's frame (arch::OptimizedHitFrame,
// below `backup`) faulted and was abandoned: finish the hit as the
// dispatcher would have (undo the handler's register changes), with the
// same `regs`, `backup`, continuation and data word.  Returns where to
// continue.
extern "C" std::uint64_t ukp_optimized_abandoned(pt_regs* regs, pt_regs* backup, std::uint64_t continuation,
                                                 void* point);
