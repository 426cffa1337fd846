// analyze_probe_insn: which instructions are refused, emulated, or boosted.
#include <gtest/gtest.h>

#include "arch/x86_64/probe_insn.hpp"
#include "x86_test_support.hpp"

namespace ukp::x86 {
namespace {

using testing::Bytes;
using testing::hex;
using testing::must_decode;

constexpr std::uint64_t code_address = 0x7f00'0000'1000;

struct Refusal {
    Bytes bytes;
    std::string_view mnemonic;  // must appear in the message
};

void expect_refused(const std::vector<Refusal>& refusals) {
    for (const auto& refusal : refusals) {
        auto probe = analyze_probe_insn(must_decode(refusal.bytes, code_address));
        ASSERT_FALSE(probe.has_value()) << hex(refusal.bytes) << " was accepted";
        EXPECT_EQ(probe.error().code, Errc::UnprobeableInstruction) << hex(refusal.bytes);
        EXPECT_NE(probe.error().message.find(refusal.mnemonic), std::string::npos)
            << probe.error().message;
        EXPECT_NE(probe.error().message.find("at 0x7f0000001000"), std::string::npos)
            << probe.error().message;
    }
}

struct Classification {
    Bytes bytes;
    EmulationKind kind;
};

void expect_emulated(const std::vector<Classification>& cases) {
    for (const auto& test_case : cases) {
        auto insn = must_decode(test_case.bytes, code_address);
        auto probe = analyze_probe_insn(insn);
        ASSERT_TRUE(probe.has_value()) << probe.error().message;
        EXPECT_EQ(probe->strategy, Strategy::Emulate) << disassemble(insn);
        EXPECT_EQ(probe->emulation, test_case.kind) << disassemble(insn);
        EXPECT_EQ(probe->insn.length, insn.length);
    }
}

void expect_boosted(const std::vector<Bytes>& cases) {
    for (const auto& bytes : cases) {
        auto insn = must_decode(bytes, code_address);
        auto probe = analyze_probe_insn(insn);
        ASSERT_TRUE(probe.has_value()) << probe.error().message;
        EXPECT_EQ(probe->strategy, Strategy::Boost) << disassemble(insn);
        EXPECT_EQ(probe->emulation, EmulationKind::None) << disassemble(insn);
    }
}

// --- Refusals, one reason each ----------------------------------------------

TEST(AnalyzeProbeInsn, RefusesTheProgramsOwnBreakpoints) {
    expect_refused({
        {{0xCC}, "int3"},        // int3
        {{0xCD, 0x03}, "int"},   // int 3
    });
}

TEST(AnalyzeProbeInsn, RefusesSoftwareInterrupts) {
    expect_refused({
        {{0xCD, 0x80}, "int 0x80"},  // int 0x80
        {{0xF1}, "int1"},            // int1
    });
}

TEST(AnalyzeProbeInsn, RefusesFarTransfers) {
    expect_refused({
        {{0xFF, 0x2D, 0x00, 0x00, 0x00, 0x00}, "jmp far"},   // jmp far [rip+0]
        {{0xFF, 0x1D, 0x00, 0x00, 0x00, 0x00}, "call far"},  // call far [rip+0]
        {{0xCB}, "ret far"},                                 // retf
        {{0xCA, 0x08, 0x00}, "ret far"},                     // retf 8
    });
}

TEST(AnalyzeProbeInsn, RefusesInterruptReturnsAndSysenter) {
    expect_refused({
        {{0x48, 0xCF}, "iretq"},     // iretq
        {{0x0F, 0x34}, "sysenter"},  // sysenter
        {{0x0F, 0x35}, "sysexit"},   // sysexit
    });
}

TEST(AnalyzeProbeInsn, RefusesTransactions) {
    expect_refused({
        {{0xC7, 0xF8, 0x00, 0x01, 0x00, 0x00}, "xbegin"},  // xbegin rel32
        {{0xC6, 0xF8, 0x00}, "xabort"},                    // xabort 0
        {{0x0F, 0x01, 0xD5}, "xend"},                      // xend
    });
}

TEST(AnalyzeProbeInsn, RefusesPrivilegedInstructions) {
    expect_refused({
        {{0xF4}, "hlt"},                    // hlt
        {{0x0F, 0x20, 0xC0}, "cr0"},        // mov rax, cr0
        {{0x0F, 0x30}, "wrmsr"},            // wrmsr
        {{0x0F, 0x01, 0xF8}, "swapgs"},     // swapgs
    });
}

TEST(AnalyzeProbeInsn, RefusesSegmentRegisterPushAndPop) {
    expect_refused({
        {{0x0F, 0xA0}, "push fs"},  // push fs
        {{0x0F, 0xA1}, "pop fs"},   // pop fs
        {{0x0F, 0xA8}, "push gs"},  // push gs
        {{0x0F, 0xA9}, "pop gs"},   // pop gs
    });
}

TEST(AnalyzeProbeInsn, RefusesIndirectBranchesThroughFsOrGs) {
    expect_refused({
        {{0x64, 0xFF, 0x25, 0x00, 0x01, 0x00, 0x00}, "jmp"},  // jmp fs:[rip+0x100]
        {{0x65, 0xFF, 0x10}, "call"},                         // call gs:[rax]
    });
}

TEST(AnalyzeProbeInsn, RefusesNearBranchesWhoseOperandSizeIsVendorDependent) {
    expect_refused({
        {{0x66, 0xE8, 0x00, 0x01, 0x00, 0x00}, "call"},  // data16 call rel32 (AMD: call rel16)
        {{0x66, 0xE9, 0x00, 0x01, 0x00, 0x00}, "jmp"},   // data16 jmp rel32
        {{0x66, 0xC3}, "ret"},                           // data16 ret
        {{0x66, 0xFF, 0xE0}, "jmp"},                     // data16 jmp rax
    });
}

// --- Emulation kinds ---------------------------------------------------------

TEST(AnalyzeProbeInsn, EmulatesNops) {
    expect_emulated({
        {{0x90}, EmulationKind::Nop},                                            // nop
        {{0x66, 0x90}, EmulationKind::Nop},                                      // xchg ax, ax
        {{0x0F, 0x1F, 0x44, 0x00, 0x00}, EmulationKind::Nop},                    // nop [rax+rax]
        {{0x66, 0x2E, 0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00}, EmulationKind::Nop},  // cs nop word [rax+rax]
        {{0xF3, 0x0F, 0x1E, 0xFA}, EmulationKind::Nop},                          // endbr64
        {{0xF3, 0x0F, 0x1E, 0xFB}, EmulationKind::Nop},                          // endbr32
        {{0xF3, 0x90}, EmulationKind::Nop},                                      // pause
    });
}

TEST(AnalyzeProbeInsn, EmulatesPushAndPop) {
    expect_emulated({
        {{0x55}, EmulationKind::PushReg},                          // push rbp
        {{0x41, 0x57}, EmulationKind::PushReg},                    // push r15
        {{0x54}, EmulationKind::PushReg},                          // push rsp
        {{0xFF, 0xF3}, EmulationKind::PushReg},                    // push rbx (FF /6 form)
        {{0x6A, 0x80}, EmulationKind::PushImm},                    // push -0x80
        {{0x68, 0x00, 0x00, 0x00, 0x80}, EmulationKind::PushImm},  // push -0x80000000
        {{0x5D}, EmulationKind::PopReg},                           // pop rbp
        {{0x41, 0x5C}, EmulationKind::PopReg},                     // pop r12
        {{0x5C}, EmulationKind::PopReg},                           // pop rsp
        {{0x8F, 0xC0}, EmulationKind::PopReg},                     // pop rax (8F /0 form)
    });
}

TEST(AnalyzeProbeInsn, EmulatesRelativeBranches) {
    expect_emulated({
        {{0xEB, 0x10}, EmulationKind::JmpRel},                                // jmp rel8
        {{0xE9, 0x00, 0x01, 0x00, 0x00}, EmulationKind::JmpRel},              // jmp rel32
        {{0xF2, 0xE9, 0x00, 0x01, 0x00, 0x00}, EmulationKind::JmpRel},        // bnd jmp rel32
        {{0x74, 0x10}, EmulationKind::JccRel},                                // je rel8
        {{0x0F, 0x8C, 0x00, 0x01, 0x00, 0x00}, EmulationKind::JccRel},        // jl rel32
        {{0x3E, 0x75, 0x10}, EmulationKind::JccRel},                          // jne rel8, taken hint
        {{0xE8, 0x00, 0x01, 0x00, 0x00}, EmulationKind::CallRel},             // call rel32
        {{0x66, 0x66, 0x48, 0xE8, 0x00, 0x01, 0x00, 0x00}, EmulationKind::CallRel},  // TLS call: REX.W wins
    });
}

TEST(AnalyzeProbeInsn, EmulatesReturns) {
    expect_emulated({
        {{0xC3}, EmulationKind::Ret},              // ret
        {{0xF3, 0xC3}, EmulationKind::Ret},        // rep ret
        {{0xF2, 0xC3}, EmulationKind::Ret},        // bnd ret
        {{0xC2, 0x10, 0x00}, EmulationKind::Ret},  // ret 0x10
    });
}

TEST(AnalyzeProbeInsn, EmulatesIndirectBranches) {
    expect_emulated({
        {{0xFF, 0xE0}, EmulationKind::JmpIndirect},                                // jmp rax
        {{0x41, 0xFF, 0xE3}, EmulationKind::JmpIndirect},                          // jmp r11
        {{0xFF, 0x24, 0xC5, 0x00, 0x10, 0x00, 0x00}, EmulationKind::JmpIndirect},  // jmp [rax*8+0x1000]
        {{0xFF, 0x25, 0x00, 0x01, 0x00, 0x00}, EmulationKind::JmpIndirect},        // jmp [rip+0x100]
        {{0x3E, 0xFF, 0xE0}, EmulationKind::JmpIndirect},                          // notrack jmp rax
        {{0x3E, 0xFF, 0x25, 0x00, 0x01, 0x00, 0x00}, EmulationKind::JmpIndirect},  // notrack jmp [rip+0x100]
        {{0xF2, 0xFF, 0xE0}, EmulationKind::JmpIndirect},                          // bnd jmp rax
        {{0xFF, 0xD0}, EmulationKind::CallIndirect},                               // call rax
        {{0xFF, 0x15, 0x00, 0x01, 0x00, 0x00}, EmulationKind::CallIndirect},       // call [rip+0x100]
        {{0xFF, 0x54, 0x24, 0x08}, EmulationKind::CallIndirect},                   // call [rsp+8]
        {{0x67, 0xFF, 0x10}, EmulationKind::CallIndirect},                         // call [eax]
    });
}

TEST(AnalyzeProbeInsn, EmulatesLoopFamily) {
    expect_emulated({
        {{0xE2, 0xFE}, EmulationKind::Loop},        // loop
        {{0xE1, 0xFE}, EmulationKind::Loop},        // loope
        {{0xE0, 0xFE}, EmulationKind::Loop},        // loopne
        {{0xE3, 0x10}, EmulationKind::Loop},        // jrcxz
        {{0x67, 0xE3, 0x10}, EmulationKind::Loop},  // jecxz
    });
}

// --- Boosted copies ----------------------------------------------------------

TEST(AnalyzeProbeInsn, BoostsPositionIndependentAndRipRelativeInstructions) {
    expect_boosted({
        {0x48, 0x89, 0xE5},                          // mov rbp, rsp
        {0x48, 0x8B, 0x05, 0x00, 0x01, 0x00, 0x00},  // mov rax, [rip+0x100]
        {0x48, 0x8D, 0x3D, 0xE0, 0xFF, 0xFF, 0xFF},  // lea rdi, [rip-0x20]
        {0x48, 0x83, 0xEC, 0x20},                    // sub rsp, 0x20
        {0x31, 0xC0},                                // xor eax, eax
        {0x0F, 0x05},                                // syscall
        {0x0F, 0xA2},                                // cpuid
        {0x0F, 0x31},                                // rdtsc
        {0x0F, 0x28, 0xC1},                          // movaps xmm0, xmm1
        {0xC5, 0xF4, 0x58, 0xC2},                    // vaddps ymm0, ymm1, ymm2
        {0xF0, 0x48, 0x0F, 0xB1, 0x0F},              // lock cmpxchg [rdi], rcx
        {0xF3, 0xA4},                                // rep movsb
        {0x64, 0x48, 0x8B, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00},  // mov rax, fs:[0x28]
        {0x0F, 0x01, 0xD6},                          // xtest
        {0x0F, 0x0B},                                // ud2
        {0xC9},                                      // leave
    });
}

TEST(AnalyzeProbeInsn, BoostsRareStackAndLoopFormsTheCpuRunsExactly) {
    expect_boosted({
        {0xFF, 0x35, 0x00, 0x01, 0x00, 0x00},  // push qword [rip+0x100]
        {0x66, 0x50},                          // push ax
        {0x66, 0x58},                          // pop ax
        {0x66, 0x6A, 0x01},                    // push word 1
        {0x67, 0xE2, 0xFE},                    // loop with ecx as the counter
        {0x9C},                                // pushfq
    });
}

}  // namespace
}  // namespace ukp::x86
