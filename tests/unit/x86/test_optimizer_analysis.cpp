// check_optimizable and relocate_region: hand-written functions (bytes with
// their disassembly) at 0x401000, the probe offset, the expected verdict,
// and for optimizable probes the golden bytes of the relocated displaced
// code region (DCR).  The expected bytes were computed by hand and
// cross-checked with objdump, not with Zydis.  The last tests run the
// analysis over every function of this binary and of libc.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "arch/x86_64/optimizer_analysis.hpp"
#include "arch/x86_64/probe_insn.hpp"
#include "arch/x86_64/relocator.hpp"
#include "elf/symbols.hpp"
#include "x86_test_support.hpp"

namespace ukp::x86 {
namespace {

using testing::Bytes;
using testing::hex;

constexpr std::uint64_t function_start = 0x401000;
// Where the tests place the trampoline copy: 256 MiB above the function.
constexpr std::uint64_t trampoline_address = 0x1040'1000;

OptimizeCheck check_at(const Bytes& function, std::uint64_t probe_offset) {
    return check_optimizable(function, function_start, function_start + probe_offset);
}

// The probe is optimizable, its DCR is `region_length` bytes, and relocated
// to trampoline_address it reads `expected_relocation`.
void expect_optimizable(const Bytes& function, std::uint64_t probe_offset,
                        std::size_t region_length, const Bytes& expected_relocation) {
    const auto check = check_at(function, probe_offset);
    ASSERT_TRUE(check.can_optimize()) << describe(check.blocker) << ": " << check.detail;
    EXPECT_EQ(check.region.start, function_start + probe_offset);
    EXPECT_EQ(check.region.length, region_length);
    std::vector<std::uint8_t> out(check.region.insns.size() * max_relocated_length +
                                  jmp_rel32_length);
    auto written = relocate_region(check.region, trampoline_address, out);
    ASSERT_TRUE(written.has_value()) << written.error().message;
    const Bytes actual(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(*written));
    EXPECT_EQ(hex(actual), hex(expected_relocation));
}

// The probe is refused for `blocker`, and the detail names each of `names`
// (the blocking instruction's disassembly, its address).
void expect_refused(const Bytes& function, std::uint64_t probe_offset, OptimizeBlocker blocker,
                    const std::vector<std::string_view>& names) {
    const auto check = check_at(function, probe_offset);
    EXPECT_FALSE(check.can_optimize());
    EXPECT_EQ(describe(check.blocker), describe(blocker)) << check.detail;
    for (const auto name : names) {
        EXPECT_NE(check.detail.find(name), std::string::npos)
            << "'" << name << "' missing from: " << check.detail;
    }
}

// --- Prologue forms: the DCR relocated, then `jmp` back ----------------------

TEST(OptimizerRelocation, Endbr64AndPushRbpCoverTheJump) {
    const Bytes function = {
        0xF3, 0x0F, 0x1E, 0xFA,  // 401000: endbr64
        0x55,                    // 401004: push rbp
        0x48, 0x89, 0xE5,        // 401005: mov rbp, rsp
        0x48, 0x83, 0xEC, 0x10,  // 401008: sub rsp, 0x10
        0x31, 0xC0,              // 40100c: xor eax, eax
        0xC9,                    // 40100e: leave
        0xC3,                    // 40100f: ret
    };
    expect_optimizable(function, 0, 5,
                       {
                           0xF3, 0x0F, 0x1E, 0xFA,        // 10401000: endbr64
                           0x55,                          // 10401004: push rbp
                           0xE9, 0xFB, 0xFF, 0xFF, 0xEF,  // 10401005: jmp 0x401005
                       });
}

TEST(OptimizerRelocation, ProbeAfterEndbr64TakesThreeInstructions) {
    const Bytes function = {
        0xF3, 0x0F, 0x1E, 0xFA,  // 401000: endbr64
        0x55,                    // 401004: push rbp           <- probe
        0x48, 0x89, 0xE5,        // 401005: mov rbp, rsp
        0x48, 0x83, 0xEC, 0x10,  // 401008: sub rsp, 0x10
        0x31, 0xC0,              // 40100c: xor eax, eax
        0xC9,                    // 40100e: leave
        0xC3,                    // 40100f: ret
    };
    expect_optimizable(function, 4, 8,
                       {
                           0x55,                          // 10401000: push rbp
                           0x48, 0x89, 0xE5,              // 10401001: mov rbp, rsp
                           0x48, 0x83, 0xEC, 0x10,        // 10401004: sub rsp, 0x10
                           0xE9, 0xFF, 0xFF, 0xFF, 0xEF,  // 10401008: jmp 0x40100c
                       });
}

TEST(OptimizerRelocation, PushRbpMovRbpRspSubRsp) {
    const Bytes function = {
        0x55,                    // 401000: push rbp
        0x48, 0x89, 0xE5,        // 401001: mov rbp, rsp
        0x48, 0x83, 0xEC, 0x20,  // 401004: sub rsp, 0x20
        0x31, 0xC0,              // 401008: xor eax, eax
        0xC9,                    // 40100a: leave
        0xC3,                    // 40100b: ret
    };
    expect_optimizable(function, 0, 8,
                       {
                           0x55,                          // 10401000: push rbp
                           0x48, 0x89, 0xE5,              // 10401001: mov rbp, rsp
                           0x48, 0x83, 0xEC, 0x20,        // 10401004: sub rsp, 0x20
                           0xE9, 0xFB, 0xFF, 0xFF, 0xEF,  // 10401008: jmp 0x401008
                       });
}

TEST(OptimizerRelocation, CalleeSavedPushes) {
    const Bytes function = {
        0x41, 0x57,              // 401000: push r15
        0x41, 0x56,              // 401002: push r14
        0x41, 0x55,              // 401004: push r13
        0x53,                    // 401006: push rbx
        0x48, 0x83, 0xEC, 0x18,  // 401007: sub rsp, 0x18
        0x48, 0x83, 0xC4, 0x18,  // 40100b: add rsp, 0x18
        0x5B,                    // 40100f: pop rbx
        0x41, 0x5D,              // 401010: pop r13
        0x41, 0x5E,              // 401012: pop r14
        0x41, 0x5F,              // 401014: pop r15
        0xC3,                    // 401016: ret
    };
    expect_optimizable(function, 0, 6,
                       {
                           0x41, 0x57,                    // 10401000: push r15
                           0x41, 0x56,                    // 10401002: push r14
                           0x41, 0x55,                    // 10401004: push r13
                           0xE9, 0xFB, 0xFF, 0xFF, 0xEF,  // 10401006: jmp 0x401006
                       });
}

TEST(OptimizerRelocation, SubRspImm32) {
    const Bytes function = {
        0x48, 0x81, 0xEC, 0x88, 0x00, 0x00, 0x00,  // 401000: sub rsp, 0x88
        0x31, 0xC0,                                // 401007: xor eax, eax
        0x48, 0x81, 0xC4, 0x88, 0x00, 0x00, 0x00,  // 401009: add rsp, 0x88
        0xC3,                                      // 401010: ret
    };
    expect_optimizable(function, 0, 7,
                       {
                           0x48, 0x81, 0xEC, 0x88, 0x00, 0x00, 0x00,  // 10401000: sub rsp, 0x88
                           0xE9, 0xFB, 0xFF, 0xFF, 0xEF,              // 10401007: jmp 0x401007
                       });
}

TEST(OptimizerRelocation, RipRelativeLeaIsRebased) {
    const Bytes function = {
        0x48, 0x8D, 0x3D, 0x00, 0x10, 0x00, 0x00,  // 401000: lea rdi, [rip+0x1000] (-> 0x402007)
        0x31, 0xC0,                                // 401007: xor eax, eax
        0xC3,                                      // 401009: ret
    };
    expect_optimizable(
        function, 0, 7,
        {
            // lea rdi, [rip+0x1000] -> lea rdi, [rip-0xffff000] (-> 0x402007)
            0x48, 0x8D, 0x3D, 0x00, 0x10, 0x00, 0xF0,  // 10401000
            0xE9, 0xFB, 0xFF, 0xFF, 0xEF,              // 10401007: jmp 0x401007
        });
}

TEST(OptimizerRelocation, RipRelativeMovIsRebased) {
    const Bytes function = {
        0x48, 0x8B, 0x05, 0xE1, 0x2F, 0x00, 0x00,  // 401000: mov rax, [rip+0x2fe1] (-> 0x403fe8)
        0x48, 0x8B, 0x00,                          // 401007: mov rax, [rax]
        0xC3,                                      // 40100a: ret
    };
    expect_optimizable(
        function, 0, 7,
        {
            // mov rax, [rip+0x2fe1] -> mov rax, [rip-0xfffd01f] (-> 0x403fe8)
            0x48, 0x8B, 0x05, 0xE1, 0x2F, 0x00, 0xF0,  // 10401000
            0xE9, 0xFB, 0xFF, 0xFF, 0xEF,              // 10401007: jmp 0x401007
        });
}

TEST(OptimizerRelocation, RipRelativeCmpKeepsItsImmediate) {
    const Bytes function = {
        // 401000: cmp byte ptr [rip+0x100], 0 (-> 0x401107)
        0x80, 0x3D, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x75, 0x03,                                // 401007: jnz 0x40100c
        0x31, 0xC0,                                // 401009: xor eax, eax
        0xC3,                                      // 40100b: ret
        0xB8, 0x01, 0x00, 0x00, 0x00,              // 40100c: mov eax, 1
        0xC3,                                      // 401011: ret
    };
    expect_optimizable(
        function, 0, 7,
        {
            // cmp byte ptr [rip+0x100], 0 -> cmp byte ptr [rip-0xfffff00], 0 (-> 0x401107)
            0x80, 0x3D, 0x00, 0x01, 0x00, 0xF0, 0x00,  // 10401000
            0xE9, 0xFB, 0xFF, 0xFF, 0xEF,              // 10401007: jmp 0x401007
        });
}

TEST(OptimizerRelocation, ShortJccOutOfRegionBecomesRel32) {
    const Bytes function = {
        0x48, 0x85, 0xFF,              // 401000: test rdi, rdi
        0x74, 0x06,                    // 401003: jz 0x40100b
        0xB8, 0x01, 0x00, 0x00, 0x00,  // 401005: mov eax, 1
        0xC3,                          // 40100a: ret
        0x31, 0xC0,                    // 40100b: xor eax, eax
        0xC3,                          // 40100d: ret
    };
    expect_optimizable(function, 0, 5,
                       {
                           0x48, 0x85, 0xFF,                    // 10401000: test rdi, rdi
                           // jz rel8 -> jz rel32
                           0x0F, 0x84, 0x02, 0x00, 0x00, 0xF0,  // 10401003: jz 0x40100b
                           0xE9, 0xF7, 0xFF, 0xFF, 0xEF,        // 10401009: jmp 0x401005
                       });
}

TEST(OptimizerRelocation, XorEaxThenMovEdiImmediate) {
    const Bytes function = {
        0x31, 0xC0,                    // 401000: xor eax, eax
        0xBF, 0x2A, 0x00, 0x00, 0x00,  // 401002: mov edi, 0x2a
        0xE8, 0xF4, 0x0F, 0x00, 0x00,  // 401007: call 0x402000 (after the region: fine)
        0xC3,                          // 40100c: ret
    };
    expect_optimizable(function, 0, 7,
                       {
                           0x31, 0xC0,                    // 10401000: xor eax, eax
                           0xBF, 0x2A, 0x00, 0x00, 0x00,  // 10401002: mov edi, 0x2a
                           0xE9, 0xFB, 0xFF, 0xFF, 0xEF,  // 10401007: jmp 0x401007
                       });
}

// --- Allowed shapes ------------------------------------------------------------

TEST(OptimizerAllowed, TailCallThroughGotInsideRegion) {
    const Bytes function = {
        0x48, 0x89, 0xFE,                    // 401000: mov rsi, rdi
        0x31, 0xFF,                          // 401003: xor edi, edi       <- probe
        0xFF, 0x25, 0xF5, 0x0F, 0x00, 0x00,  // 401005: jmp qword ptr [rip+0xff5] (-> 0x402000)
    };
    expect_optimizable(
        function, 3, 8,
        {
            0x31, 0xFF,  // 10401000: xor edi, edi
            // jmp qword ptr [rip+0xff5] -> jmp qword ptr [rip-0xffff008] (-> 0x402000)
            0xFF, 0x25, 0xF8, 0x0F, 0x00, 0xF0,  // 10401002
            0xE9, 0xFE, 0xFF, 0xFF, 0xEF,        // 10401008: jmp 0x40100b (never reached)
        });
}

TEST(OptimizerAllowed, TailCallThroughGotAfterRegion) {
    const Bytes function = {
        0x48, 0x89, 0xFE,                    // 401000: mov rsi, rdi
        0x31, 0xFF,                          // 401003: xor edi, edi
        0xFF, 0x25, 0xF5, 0x0F, 0x00, 0x00,  // 401005: jmp qword ptr [rip+0xff5] (-> 0x402000)
    };
    const auto check = check_at(function, 0);
    EXPECT_TRUE(check.can_optimize()) << describe(check.blocker) << ": " << check.detail;
    EXPECT_EQ(check.region.length, 5u);
}

TEST(OptimizerAllowed, TrailingInt3AndNopPaddingAfterRet) {
    const Bytes function = {
        0xB8, 0x2A, 0x00, 0x00, 0x00,        // 401000: mov eax, 0x2a
        0xC3,                                // 401005: ret
        0xCC, 0xCC,                          // 401006: int3; int3
        0x66, 0x0F, 0x1F, 0x44, 0x00, 0x00,  // 401008: nop word ptr [rax+rax]
        0xCC,                                // 40100e: int3
    };
    expect_optimizable(function, 0, 5,
                       {
                           0xB8, 0x2A, 0x00, 0x00, 0x00,  // 10401000: mov eax, 0x2a
                           0xE9, 0xFB, 0xFF, 0xFF, 0xEF,  // 10401005: jmp 0x401005
                       });
}

TEST(OptimizerAllowed, BranchTargetingExactlyTheRegionStart) {
    const Bytes function = {
        0x31, 0xC0,              // 401000: xor eax, eax
        0xFF, 0xC0,              // 401002: inc eax          <- probe, loop head
        0x39, 0xF8,              // 401004: cmp eax, edi
        0x48, 0x89, 0xC2,        // 401006: mov rdx, rax
        0x75, 0xF7,              // 401009: jnz 0x401002
        0xC3,                    // 40100b: ret
    };
    expect_optimizable(function, 2, 7,
                       {
                           0xFF, 0xC0,                    // 10401000: inc eax
                           0x39, 0xF8,                    // 10401002: cmp eax, edi
                           0x48, 0x89, 0xC2,              // 10401004: mov rdx, rax
                           0xE9, 0xFD, 0xFF, 0xFF, 0xEF,  // 10401007: jmp 0x401009
                       });
}

TEST(OptimizerAllowed, IndirectCallElsewhereInFunction) {
    const Bytes function = {
        0x55,                    // 401000: push rbp       <- probe
        0x48, 0x89, 0xE5,        // 401001: mov rbp, rsp
        0x48, 0x83, 0xEC, 0x10,  // 401004: sub rsp, 0x10
        0xFF, 0xD0,              // 401008: call rax       after the region: returns to 40100a
        0xC9,                    // 40100a: leave
        0xC3,                    // 40100b: ret
    };
    const auto check = check_at(function, 0);
    EXPECT_TRUE(check.can_optimize()) << describe(check.blocker) << ": " << check.detail;
    EXPECT_EQ(check.region.length, 8u);
}

// --- Refusals, one reason each -------------------------------------------------

TEST(OptimizerRefusal, LaterBranchBackIntoRegion) {
    const Bytes function = {
        0x31, 0xC0,  // 401000: xor eax, eax     <- probe
        0xFF, 0xC0,  // 401002: inc eax          loop head, inside the region
        0x39, 0xF8,  // 401004: cmp eax, edi
        0x75, 0xFA,  // 401006: jnz 0x401002
        0xC3,        // 401008: ret
    };
    expect_refused(function, 0, OptimizeBlocker::BranchIntoRegion,
                   {"jnz 0x401002", "0x401006", "[0x401000, 0x401006)"});
}

TEST(OptimizerRefusal, CallIntoRegionCountsAsBranch) {
    const Bytes function = {
        0x55,                          // 401000: push rbp           <- probe
        0x48, 0x89, 0xE5,              // 401001: mov rbp, rsp
        0x5D,                          // 401004: pop rbp
        0xE8, 0xF7, 0xFF, 0xFF, 0xFF,  // 401005: call 0x401001   into the region [401000, 401005)
        0xC3,                          // 40100a: ret
    };
    expect_refused(function, 0, OptimizeBlocker::BranchIntoRegion, {"call 0x401001", "0x401005"});
}

TEST(OptimizerRefusal, RegionBranchToItsOwnStart) {
    const Bytes function = {
        0xF3, 0x90,  // 401000: pause            <- probe
        0x39, 0x07,  // 401002: cmp [rdi], eax
        0x74, 0xFA,  // 401004: jz 0x401000      a copy would jump into the jump
        0xC3,        // 401006: ret
    };
    expect_refused(function, 0, OptimizeBlocker::BranchIntoRegion, {"jz 0x401000", "0x401004"});
}

TEST(OptimizerRefusal, CallInRegion) {
    const Bytes function = {
        0x31, 0xFF,                    // 401000: xor edi, edi   <- probe
        0xE8, 0xF9, 0x0F, 0x00, 0x00,  // 401002: call 0x402000
        0xC3,                          // 401007: ret
    };
    expect_refused(function, 0, OptimizeBlocker::CallInRegion, {"call 0x402000", "0x401002"});
}

TEST(OptimizerRefusal, SyscallInRegion) {
    const Bytes function = {
        0x31, 0xC0,        // 401000: xor eax, eax   <- probe
        0x0F, 0x05,        // 401002: syscall        a blocked thread resumes at 401004
        0x48, 0x89, 0xC7,  // 401004: mov rdi, rax
        0xC3,              // 401007: ret
    };
    expect_refused(function, 0, OptimizeBlocker::CallInRegion, {"syscall", "0x401002"});
}

TEST(OptimizerRefusal, JumpThroughRegister) {
    const Bytes function = {
        0x55,                    // 401000: push rbp          <- probe
        0x48, 0x89, 0xE5,        // 401001: mov rbp, rsp
        0x48, 0x83, 0xEC, 0x10,  // 401004: sub rsp, 0x10
        0xFF, 0xE0,              // 401008: jmp rax
    };
    expect_refused(function, 0, OptimizeBlocker::IndirectJump, {"jmp rax", "0x401008"});
}

TEST(OptimizerRefusal, NotrackJumpThroughRegister) {
    const Bytes function = {
        0x55,                    // 401000: push rbp          <- probe
        0x48, 0x89, 0xE5,        // 401001: mov rbp, rsp
        0x48, 0x83, 0xEC, 0x10,  // 401004: sub rsp, 0x10
        0x3E, 0xFF, 0xE0,        // 401008: notrack jmp rax   (a CET switch)
    };
    expect_refused(function, 0, OptimizeBlocker::IndirectJump, {"jmp rax", "0x401008"});
}

TEST(OptimizerRefusal, JumpThroughIndexedTable) {
    const Bytes function = {
        0x48, 0x83, 0xFF, 0x03,                    // 401000: cmp rdi, 3     <- probe
        0x77, 0x07,                                // 401004: ja 0x40100d
        0xFF, 0x24, 0xFD, 0x00, 0x20, 0x40, 0x00,  // 401006: jmp qword ptr [rdi*8+0x402000]
        0x31, 0xC0,                                // 40100d: xor eax, eax
        0xC3,                                      // 40100f: ret
    };
    expect_refused(function, 0, OptimizeBlocker::IndirectJump,
                   {"jmp qword ptr [rdi*8+0x402000]", "0x401006"});
}

TEST(OptimizerRefusal, JumpThroughRegisterBasedSlot) {
    const Bytes function = {
        0x48, 0x8B, 0x47, 0x08,  // 401000: mov rax, [rdi+8]   <- probe
        0x48, 0x85, 0xC0,        // 401004: test rax, rax
        0xFF, 0x60, 0x10,        // 401007: jmp qword ptr [rax+0x10]
    };
    expect_refused(function, 0, OptimizeBlocker::IndirectJump,
                   {"jmp qword ptr [rax+0x10]", "0x401007"});
}

TEST(OptimizerRefusal, ThreeByteFunctionIsTooShort) {
    const Bytes function = {
        0x31, 0xC0,  // 401000: xor eax, eax   <- probe
        0xC3,        // 401002: ret
    };
    expect_refused(function, 0, OptimizeBlocker::TooShort, {"ret", "0x401002"});
}

TEST(OptimizerRefusal, FunctionEndingBeforeFiveBytesIsTooShort) {
    const Bytes function = {
        0x31, 0xC0,  // 401000: xor eax, eax   <- probe
        0xFF, 0xC0,  // 401002: inc eax        (the symbol ends here)
    };
    expect_refused(function, 0, OptimizeBlocker::TooShort, {"4 bytes after 0x401000"});
}

TEST(OptimizerRefusal, RetInsideFirstFiveBytes) {
    const Bytes function = {
        0x31, 0xC0,                    // 401000: xor eax, eax   <- probe
        0xC3,                          // 401002: ret            the jump would cover 401003..
        0xB8, 0x01, 0x00, 0x00, 0x00,  // 401003: mov eax, 1     reached from elsewhere
        0xC3,                          // 401008: ret
    };
    expect_refused(function, 0, OptimizeBlocker::TooShort, {"'ret' at 0x401002"});
}

TEST(OptimizerRefusal, JmpInsideFirstFiveBytes) {
    const Bytes function = {
        0x85, 0xFF,                    // 401000: test edi, edi   <- probe
        0xEB, 0x05,                    // 401002: jmp 0x401009
        0xB8, 0x01, 0x00, 0x00, 0x00,  // 401004: mov eax, 1
        0xC3,                          // 401009: ret
    };
    expect_refused(function, 0, OptimizeBlocker::TooShort, {"jmp 0x401009", "0x401002"});
}

TEST(OptimizerRefusal, UndecodableMiddle) {
    const Bytes function = {
        0x55,              // 401000: push rbp      <- probe
        0x48, 0x89, 0xE5,  // 401001: mov rbp, rsp
        0x06,              // 401004: (push es: invalid in 64-bit mode)
        0x5D,              // 401005: pop rbp
        0xC3,              // 401006: ret
    };
    expect_refused(function, 0, OptimizeBlocker::UndecodableFunction, {"0x401004", "06"});
}

TEST(OptimizerRefusal, UndecodableBytesAfterRetAreNotPadding) {
    const Bytes function = {
        0xB8, 0x01, 0x00, 0x00, 0x00,  // 401000: mov eax, 1   <- probe
        0xC3,                          // 401005: ret
        0xCC,                          // 401006: int3
        0x06,                          // 401007: (push es: invalid in 64-bit mode)
    };
    expect_refused(function, 0, OptimizeBlocker::UndecodableFunction, {"0x401007"});
}

TEST(OptimizerRefusal, Int3InRegion) {
    const Bytes function = {
        0x31, 0xC0,        // 401000: xor eax, eax   <- probe
        0xCC,              // 401002: int3           the program's own breakpoint
        0x48, 0x89, 0xC7,  // 401003: mov rdi, rax
        0xC3,              // 401006: ret
    };
    expect_refused(function, 0, OptimizeBlocker::UnrelocatableInsn, {"int3", "0x401002"});
}

TEST(OptimizerRefusal, XbeginInRegion) {
    const Bytes function = {
        0xC7, 0xF8, 0x02, 0x00, 0x00, 0x00,  // 401000: xbegin 0x401008   <- probe
        0x31, 0xC0,                          // 401006: xor eax, eax
        0xC3,                                // 401008: ret
    };
    expect_refused(function, 0, OptimizeBlocker::UnrelocatableInsn, {"xbegin", "0x401000"});
}

TEST(OptimizerRefusal, XbeginAbortTargetInsideRegion) {
    const Bytes function = {
        0x31, 0xC0,                          // 401000: xor eax, eax    <- probe
        0x89, 0xC2,                          // 401002: mov edx, eax   abort handler
        0x90,                                // 401004: nop
        0xC7, 0xF8, 0xF7, 0xFF, 0xFF, 0xFF,  // 401005: xbegin 0x401002
        0xC3,                                // 40100b: ret
    };
    expect_refused(function, 0, OptimizeBlocker::BranchIntoRegion, {"xbegin", "0x401005"});
}

TEST(OptimizerRefusal, ProbeInsideAnInstruction) {
    const Bytes function = {
        0xF3, 0x0F, 0x1E, 0xFA,  // 401000: endbr64     probe at 401001, inside it
        0x55,                    // 401004: push rbp
        0x48, 0x89, 0xE5,        // 401005: mov rbp, rsp
        0x5D,                    // 401008: pop rbp
        0xC3,                    // 401009: ret
    };
    expect_refused(function, 1, OptimizeBlocker::NotInFunction,
                   {"0x401001", "'endbr64' at 0x401000"});
}

TEST(OptimizerRefusal, ProbeOutsideFunction) {
    const Bytes function = {
        0xB8, 0x01, 0x00, 0x00, 0x00,  // 401000: mov eax, 1
        0xC3,                          // 401005: ret     probe at 401006, one past the end
    };
    expect_refused(function, 6, OptimizeBlocker::NotInFunction,
                   {"0x401006", "[0x401000, 0x401006)"});
}

TEST(OptimizerRefusal, ProbeInTrailingPadding) {
    const Bytes function = {
        0xB8, 0x01, 0x00, 0x00, 0x00,        // 401000: mov eax, 1
        0xC3,                                // 401005: ret
        0x0F, 0x1F, 0x44, 0x00, 0x00,        // 401006: nop dword ptr [rax+rax]  <- probe
        0x0F, 0x1F, 0x44, 0x00, 0x00,        // 40100b: nop dword ptr [rax+rax]
    };
    expect_refused(function, 6, OptimizeBlocker::NotInFunction, {"0x401006", "padding"});
}

// --- relocate_region errors propagate ------------------------------------------

TEST(OptimizerRelocation, RegionTooFarFromTrampolineIsOutOfRange) {
    const Bytes function = {
        0x48, 0x8D, 0x3D, 0x00, 0x10, 0x00, 0x00,  // 401000: lea rdi, [rip+0x1000] (-> 0x402007)
        0xC3,                                      // 401007: ret
    };
    const auto check = check_at(function, 0);
    ASSERT_TRUE(check.can_optimize()) << check.detail;
    std::vector<std::uint8_t> out(max_relocated_length + jmp_rel32_length);
    auto written = relocate_region(check.region, 0x7f00'0000'0000, out);
    ASSERT_FALSE(written.has_value());
    EXPECT_EQ(written.error().code, Errc::OutOfRange);
}

TEST(OptimizerRelocation, RegionNeedsRoomForWorstCase) {
    const Bytes function = {
        0xB8, 0x01, 0x00, 0x00, 0x00,  // 401000: mov eax, 1
        0xC3,                          // 401005: ret
    };
    const auto check = check_at(function, 0);
    ASSERT_TRUE(check.can_optimize()) << check.detail;
    std::vector<std::uint8_t> out(max_relocated_length);  // no room left for the jmp back
    auto written = relocate_region(check.region, trampoline_address, out);
    ASSERT_FALSE(written.has_value());
    EXPECT_EQ(written.error().code, Errc::InvalidArgument);
}

TEST(OptimizerDescribe, EveryBlockerHasText) {
    for (auto blocker : {OptimizeBlocker::None, OptimizeBlocker::TooShort,
                         OptimizeBlocker::UndecodableFunction, OptimizeBlocker::UnrelocatableInsn,
                         OptimizeBlocker::CallInRegion, OptimizeBlocker::BranchIntoRegion,
                         OptimizeBlocker::IndirectJump, OptimizeBlocker::NotInFunction}) {
        EXPECT_FALSE(describe(blocker).empty());
        EXPECT_NE(describe(blocker), "unknown optimize blocker");
    }
}

// --- Compiled code: every function of a module, probed at its entry -----------

struct ModuleSurvey {
    std::size_t functions = 0;
    std::size_t optimizable = 0;
    std::map<OptimizeBlocker, std::size_t> blockers;
    std::map<OptimizeBlocker, std::string> first_refusal;  // "symbol: detail", to show why
};

bool is_known_blocker(OptimizeBlocker blocker) {
    return blocker >= OptimizeBlocker::None && blocker <= OptimizeBlocker::NotInFunction;
}

// Reads each function's bytes in place: this process holds no breakpoints.
ModuleSurvey survey_module(const elf::SymbolIndex& index, const elf::Module& module) {
    ModuleSurvey survey;
    auto symbols = index.match_functions(module.path, "*");
    EXPECT_TRUE(symbols.has_value()) << symbols.error().message;
    if (!symbols) {
        return survey;
    }
    std::set<std::uint64_t> seen;  // aliases share an address
    for (const auto& symbol : *symbols) {
        const auto end = symbol.address + symbol.size;
        const bool is_mapped_code =
            std::ranges::any_of(module.executable_segments, [&](const elf::Segment& segment) {
                return symbol.address >= segment.start && end <= segment.end;
            });
        if (symbol.size < optimized_jump_length || !is_mapped_code ||
            !seen.insert(symbol.address).second) {
            continue;
        }
        const std::span code(reinterpret_cast<const std::uint8_t*>(symbol.address), symbol.size);
        const auto check = check_optimizable(code, symbol.address, symbol.address);
        // Registration passes the probed instruction it prepared already:
        // the verdict must not depend on it.
        if (auto first = decode_one(code, symbol.address); first && analyze_probe_insn(*first)) {
            const auto given = check_optimizable(code, symbol.address, symbol.address, &*first);
            EXPECT_EQ(describe(given.blocker), describe(check.blocker)) << symbol.name;
            EXPECT_EQ(given.detail, check.detail) << symbol.name;
            EXPECT_EQ(given.region.length, check.region.length) << symbol.name;
            EXPECT_EQ(given.region.function_uses_avx512, check.region.function_uses_avx512) << symbol.name;
        }
        ++survey.functions;
        ++survey.blockers[check.blocker];
        EXPECT_TRUE(is_known_blocker(check.blocker)) << symbol.name;
        if (!check.can_optimize()) {
            EXPECT_FALSE(check.detail.empty()) << symbol.name;
            survey.first_refusal.try_emplace(check.blocker, symbol.name + ": " + check.detail);
            continue;
        }
        ++survey.optimizable;
        EXPECT_GE(check.region.length, optimized_jump_length) << symbol.name;
        EXPECT_LT(check.region.length, optimized_jump_length + max_instruction_length)
            << symbol.name;
        EXPECT_LE(check.region.start + check.region.length, end) << symbol.name;
        std::vector<std::uint8_t> out(check.region.insns.size() * max_relocated_length +
                                      jmp_rel32_length);
        auto written = relocate_region(check.region, symbol.address + 0x1000'0000, out);
        EXPECT_TRUE(written.has_value()) << symbol.name << ": " << written.error().message;
    }
    return survey;
}

double print_survey(std::string_view module_name, const ModuleSurvey& survey) {
    const double share = survey.functions == 0
                             ? 0.0
                             : static_cast<double>(survey.optimizable) /
                                   static_cast<double>(survey.functions);
    fmt::print("{}: {} of {} function entries optimizable ({:.1f}%)\n", module_name,
               survey.optimizable, survey.functions, 100.0 * share);
    for (const auto& [blocker, count] : survey.blockers) {
        fmt::print("  {:6}  {}\n", count, describe(blocker));
        if (auto example = survey.first_refusal.find(blocker);
            example != survey.first_refusal.end()) {
            fmt::print("          e.g. {}\n", example->second);
        }
    }
    return share;
}

const elf::Module* find_module(const elf::SymbolIndex& index, std::string_view prefix) {
    for (const auto& module : index.modules()) {
        if (module.name.starts_with(prefix)) {
            return &module;
        }
    }
    return nullptr;
}

TEST(OptimizerRealCode, EveryFunctionOfThisBinary) {
    auto index = elf::SymbolIndex::snapshot();
    ASSERT_TRUE(index.has_value()) << index.error().message;
    ASSERT_FALSE(index->modules().empty());
    const auto& executable = index->modules().front();
    const auto survey = survey_module(*index, executable);
    print_survey(executable.name, survey);
    EXPECT_GT(survey.functions, 100u);
    EXPECT_GT(survey.optimizable, 0u);
}

TEST(OptimizerRealCode, EveryFunctionOfLibc) {
    auto index = elf::SymbolIndex::snapshot();
    ASSERT_TRUE(index.has_value()) << index.error().message;
    const auto* libc = find_module(*index, "libc.so");
    ASSERT_NE(libc, nullptr);
    const auto survey = survey_module(*index, *libc);
    const auto share = print_survey(libc->name, survey);
    EXPECT_GT(survey.functions, 1000u);
    // Regressions in the analysis show up as a drop here.
    EXPECT_GT(share, 0.40);
}

// The module scan for direct callers (arch::direct_branch_targets) runs in
// windows: the windows' targets together must be the whole scan's, with
// instructions that straddle a window's end and targets in other windows.
std::vector<std::uint64_t> sorted_unique(std::vector<std::uint64_t> values) {
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    return values;
}

TEST(DirectBranchTargets, FindsCallsJumpsAndConditionalJumpsIntoTheRange) {
    const std::uint64_t start = 0x10000;
    std::vector<std::uint8_t> code(64, 0x90);
    auto put_rel32 = [&](std::size_t at, std::uint8_t opcode, std::uint64_t target) {
        code[at] = opcode;
        auto displacement = static_cast<std::int32_t>(target - (start + at + 5));
        std::memcpy(&code[at + 1], &displacement, 4);
    };
    put_rel32(0, 0xe8, start + 40);   // call
    put_rel32(5, 0xe9, start + 48);   // jmp (a tail call)
    code[10] = 0x0f;                  // jne rel32
    code[11] = 0x85;
    auto displacement = static_cast<std::int32_t>(32 - 16);
    std::memcpy(&code[12], &displacement, 4);
    code[16] = 0xeb;                  // jmp rel8 to +20
    code[17] = 2;
    put_rel32(20, 0xe8, start - 0x1000);  // out of the range: not counted
    auto targets = sorted_unique(direct_branch_targets(code, start, code.size(), start, start + code.size()));
    EXPECT_EQ(targets, (std::vector<std::uint64_t>{start + 20, start + 32, start + 40, start + 48}));
}

TEST(DirectBranchTargets, ScanningInWindowsFindsWhatOneScanFinds) {
    // Pseudo-random bytes are full of e8/e9/0f8x/eb/7x: thousands of
    // targets, many in other windows, some instructions across the seams.
    const std::uint64_t start = 0x400000;
    std::vector<std::uint8_t> code(1 << 16);
    std::uint32_t state = 12345;
    for (auto& byte : code) {
        state = state * 1103515245u + 12345u;
        byte = static_cast<std::uint8_t>(state >> 16);
    }
    // Keep rel32 targets inside: small displacements everywhere.
    for (std::size_t i = 0; i + 5 <= code.size(); ++i)
        if (code[i] == 0xe8 || code[i] == 0xe9) code[i + 4] = (code[i + 3] & 0x80) ? 0xff : 0x00;
    const std::uint64_t end = start + code.size();
    auto whole = sorted_unique(direct_branch_targets(code, start, code.size(), start, end));
    ASSERT_GT(whole.size(), 1000u);
    for (std::size_t window : {std::size_t{4096}, std::size_t{1000}, std::size_t{7}}) {
        std::vector<std::uint64_t> pieces;
        for (std::size_t at = 0; at < code.size(); at += window) {
            std::size_t length = std::min(window, code.size() - at);
            std::span<const std::uint8_t> part(code.data() + at, std::min(length + 8, code.size() - at));
            auto found = direct_branch_targets(part, start + at, length, start, end);
            pieces.insert(pieces.end(), found.begin(), found.end());
        }
        EXPECT_EQ(sorted_unique(pieces), whole) << "window " << window;
    }
}

}  // namespace
}  // namespace ukp::x86
