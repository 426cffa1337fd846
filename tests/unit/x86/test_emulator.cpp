// emulate(): the effect of each emulated instruction on pt_regs and the
// stack.  Every test starts from registers filled with distinct values and
// compares the whole register file afterwards, so an emulation that touches
// anything it should not (flags included) fails.
#include <gtest/gtest.h>

#include <cstring>

#include "arch/x86_64/probe_insn.hpp"
#include "x86_test_support.hpp"

namespace ukp::x86 {
namespace {

using testing::Bytes;
using testing::must_decode;

constexpr std::uint64_t code_address = 0x7f00'0000'1000;
constexpr std::uint64_t stack_base = 0x7ffd'0000'0000;  // lowest mapped stack byte
constexpr std::size_t stack_size = 0x100;
constexpr std::uint64_t stack_pointer = stack_base + 0x80;
constexpr std::uint64_t data_base = 0x5555'0000'0000;   // a mapped data page
constexpr std::uint64_t low_data_base = 0x60'0000;      // data of a non-PIE program
constexpr std::size_t data_size = 0x100;

constexpr std::uint64_t carry_flag = 0x1;
constexpr std::uint64_t parity_flag = 0x4;
constexpr std::uint64_t zero_flag = 0x40;
constexpr std::uint64_t sign_flag = 0x80;
constexpr std::uint64_t overflow_flag = 0x800;
constexpr std::uint64_t reserved_flag = 0x2;  // always set in RFLAGS

// Three mapped regions: a stack and two data pages; everything else faults.
class FakeMemory {
public:
    FakeMemory() {
        regions_.push_back({stack_base, std::vector<std::uint8_t>(stack_size, 0xEE)});
        regions_.push_back({data_base, std::vector<std::uint8_t>(data_size, 0xDD)});
        regions_.push_back({low_data_base, std::vector<std::uint8_t>(data_size, 0xDD)});
    }

    [[nodiscard]] MemoryAccess access() {
        return MemoryAccess{&FakeMemory::read_thunk, &FakeMemory::write_thunk, this};
    }
    void put_u64(std::uint64_t address, std::uint64_t value) {
        auto* bytes = locate(address, sizeof(value));
        ASSERT_NE(bytes, nullptr);
        std::memcpy(bytes, &value, sizeof(value));
    }
    [[nodiscard]] std::uint64_t get_u64(std::uint64_t address) {
        std::uint64_t value = 0;
        if (auto* bytes = locate(address, sizeof(value))) {
            std::memcpy(&value, bytes, sizeof(value));
        }
        return value;
    }
    bool read_only = false;
    int write_count = 0;

private:
    struct Region {
        std::uint64_t base;
        std::vector<std::uint8_t> bytes;
    };

    std::uint8_t* locate(std::uint64_t address, std::size_t size) {
        for (auto& region : regions_) {
            if (address >= region.base && address + size <= region.base + region.bytes.size()) {
                return region.bytes.data() + (address - region.base);
            }
        }
        return nullptr;
    }
    static bool read_thunk(std::uint64_t address, void* out, std::size_t size, void* context) {
        auto* bytes = static_cast<FakeMemory*>(context)->locate(address, size);
        if (bytes == nullptr) {
            return false;
        }
        std::memcpy(out, bytes, size);
        return true;
    }
    static bool write_thunk(std::uint64_t address, const void* in, std::size_t size, void* context) {
        auto* memory = static_cast<FakeMemory*>(context);
        auto* bytes = memory->locate(address, size);
        if (bytes == nullptr || memory->read_only) {
            return false;
        }
        ++memory->write_count;
        std::memcpy(bytes, in, size);
        return true;
    }

    std::vector<Region> regions_;
};

pt_regs known_registers() {
    pt_regs regs{};
    regs.r15 = 0x1515'1515'1515'1515;
    regs.r14 = 0x1414'1414'1414'1414;
    regs.r13 = 0x1313'1313'1313'1313;
    regs.r12 = 0x1212'1212'1212'1212;
    regs.bp = 0xBBBB'BBBB'BBBB'0000;
    regs.bx = 0xB0B0'B0B0'B0B0'B0B0;
    regs.r11 = 0x1111'1111'1111'1111;
    regs.r10 = 0x1010'1010'1010'1010;
    regs.r9 = 0x0909'0909'0909'0909;
    regs.r8 = 0x0808'0808'0808'0808;
    regs.ax = 0xAAAA'AAAA'AAAA'AAAA;
    regs.cx = 0xCCCC'CCCC'CCCC'CCCC;
    regs.dx = 0xDDDD'DDDD'DDDD'DDDD;
    regs.si = 0x5151'5151'5151'5151;
    regs.di = 0xD1D1'D1D1'D1D1'D1D1;
    regs.orig_ax = ~0UL;
    regs.ip = code_address;
    regs.cs = 0x33;
    regs.flags = reserved_flag | 0x200;  // IF
    regs.sp = stack_pointer;
    regs.ss = 0x2B;
    return regs;
}

void expect_registers_equal(const pt_regs& expected, const pt_regs& actual) {
#define UKP_EXPECT_FIELD(field) \
    EXPECT_EQ(expected.field, actual.field) << "regs." #field << std::hex << " expected 0x" << expected.field << " got 0x" << actual.field
    UKP_EXPECT_FIELD(r15); UKP_EXPECT_FIELD(r14); UKP_EXPECT_FIELD(r13); UKP_EXPECT_FIELD(r12);
    UKP_EXPECT_FIELD(bp); UKP_EXPECT_FIELD(bx); UKP_EXPECT_FIELD(r11); UKP_EXPECT_FIELD(r10);
    UKP_EXPECT_FIELD(r9); UKP_EXPECT_FIELD(r8); UKP_EXPECT_FIELD(ax); UKP_EXPECT_FIELD(cx);
    UKP_EXPECT_FIELD(dx); UKP_EXPECT_FIELD(si); UKP_EXPECT_FIELD(di); UKP_EXPECT_FIELD(orig_ax);
    UKP_EXPECT_FIELD(ip); UKP_EXPECT_FIELD(cs); UKP_EXPECT_FIELD(flags); UKP_EXPECT_FIELD(sp);
    UKP_EXPECT_FIELD(ss);
#undef UKP_EXPECT_FIELD
}

ProbeInsn must_analyze(const Bytes& bytes, std::uint64_t address = code_address) {
    auto probe = analyze_probe_insn(must_decode(bytes, address));
    if (!probe) {
        throw std::runtime_error(probe.error().message);
    }
    if (probe->strategy != Strategy::Emulate) {
        throw std::runtime_error(disassemble(probe->insn) + " is not emulated");
    }
    return *probe;
}

// Runs `bytes` at regs.ip and expects Done.
void run(const Bytes& bytes, pt_regs& regs, FakeMemory& memory) {
    auto probe = must_analyze(bytes, regs.ip);
    auto memory_access = memory.access();
    ASSERT_EQ(emulate(probe, regs, memory_access), EmulationStatus::Done) << disassemble(probe.insn);
}

// --- Nops --------------------------------------------------------------------

TEST(Emulator, NopFormsOnlyAdvanceIp) {
    const Bytes nops[] = {
        {0x90},                                                        // nop
        {0x0F, 0x1F, 0x44, 0x00, 0x00},                                // nop [rax+rax]
        {0x66, 0x2E, 0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00},  // cs nop word [rax+rax]
        {0xF3, 0x0F, 0x1E, 0xFA},                                      // endbr64
        {0xF3, 0x90},                                                  // pause
    };
    for (const auto& nop : nops) {
        FakeMemory memory;
        auto regs = known_registers();
        auto expected = regs;
        expected.ip = code_address + nop.size();
        run(nop, regs, memory);
        expect_registers_equal(expected, regs);
        EXPECT_EQ(memory.write_count, 0);
    }
}

// --- push / pop -----------------------------------------------------------------

TEST(Emulator, PushRegisterStoresBelowRsp) {
    FakeMemory memory;
    auto regs = known_registers();
    auto expected = regs;
    expected.ip = code_address + 1;
    expected.sp = stack_pointer - 8;
    run({0x53}, regs, memory);  // push rbx
    expect_registers_equal(expected, regs);
    EXPECT_EQ(memory.get_u64(stack_pointer - 8), 0xB0B0'B0B0'B0B0'B0B0u);
}

TEST(Emulator, PushExtendedRegister) {
    FakeMemory memory;
    auto regs = known_registers();
    run({0x41, 0x50}, regs, memory);  // push r8
    EXPECT_EQ(regs.sp, stack_pointer - 8);
    EXPECT_EQ(regs.ip, code_address + 2);
    EXPECT_EQ(memory.get_u64(stack_pointer - 8), 0x0808'0808'0808'0808u);
}

TEST(Emulator, PushRspStoresItsValueBeforeTheDecrement) {
    FakeMemory memory;
    auto regs = known_registers();
    run({0x54}, regs, memory);  // push rsp
    EXPECT_EQ(regs.sp, stack_pointer - 8);
    EXPECT_EQ(memory.get_u64(stack_pointer - 8), stack_pointer);
}

TEST(Emulator, PushImmediateIsSignExtended) {
    struct Case {
        Bytes bytes;
        std::uint64_t value;
    };
    const Case cases[] = {
        {{0x6A, 0x80}, 0xFFFF'FFFF'FFFF'FF80},                  // push -0x80
        {{0x6A, 0x7F}, 0x7F},                                   // push 0x7f
        {{0x68, 0x00, 0x00, 0x00, 0x80}, 0xFFFF'FFFF'8000'0000},  // push -0x80000000
        {{0x68, 0x78, 0x56, 0x34, 0x12}, 0x1234'5678},            // push 0x12345678
    };
    for (const auto& test_case : cases) {
        FakeMemory memory;
        auto regs = known_registers();
        auto expected = regs;
        expected.ip = code_address + test_case.bytes.size();
        expected.sp = stack_pointer - 8;
        run(test_case.bytes, regs, memory);
        expect_registers_equal(expected, regs);
        EXPECT_EQ(memory.get_u64(stack_pointer - 8), test_case.value);
    }
}

TEST(Emulator, PopRegisterLoadsAndReleasesTheSlot) {
    FakeMemory memory;
    memory.put_u64(stack_pointer, 0x1234'5678'9ABC'DEF0);
    auto regs = known_registers();
    auto expected = regs;
    expected.ip = code_address + 2;
    expected.sp = stack_pointer + 8;
    expected.r15 = 0x1234'5678'9ABC'DEF0;
    run({0x41, 0x5F}, regs, memory);  // pop r15
    expect_registers_equal(expected, regs);
}

TEST(Emulator, PopRspTakesTheLoadedValue) {
    FakeMemory memory;
    memory.put_u64(stack_pointer, stack_base + 0x40);
    auto regs = known_registers();
    auto expected = regs;
    expected.ip = code_address + 1;
    expected.sp = stack_base + 0x40;
    run({0x5C}, regs, memory);  // pop rsp
    expect_registers_equal(expected, regs);
}

// --- Relative branches ------------------------------------------------------------

TEST(Emulator, JmpRelGoesToTheTarget) {
    FakeMemory memory;
    auto regs = known_registers();
    auto expected = regs;
    expected.ip = code_address + 2 + 0x10;
    run({0xEB, 0x10}, regs, memory);  // jmp 0x7f0000001012
    expect_registers_equal(expected, regs);

    regs = known_registers();
    expected.ip = code_address + 5 - 0x100;
    run({0xE9, 0x00, 0xFF, 0xFF, 0xFF}, regs, memory);  // jmp 0x7f0000000f05
    expect_registers_equal(expected, regs);
}

struct ConditionCase {
    std::uint8_t condition;
    const char* name;
    std::uint64_t flags_taken;
    std::uint64_t flags_not_taken;
};

// One flag setting that satisfies each condition and one that does not.
const ConditionCase condition_cases[] = {
    {0x0, "jo", overflow_flag, 0},
    {0x1, "jno", 0, overflow_flag},
    {0x2, "jb", carry_flag, zero_flag},
    {0x3, "jae", zero_flag, carry_flag},
    {0x4, "je", zero_flag, carry_flag},
    {0x5, "jne", carry_flag, zero_flag},
    {0x6, "jbe", carry_flag, sign_flag},
    {0x7, "ja", sign_flag, zero_flag},
    {0x8, "js", sign_flag, overflow_flag},
    {0x9, "jns", overflow_flag, sign_flag},
    {0xA, "jp", parity_flag, zero_flag},
    {0xB, "jnp", zero_flag, parity_flag},
    {0xC, "jl", sign_flag, sign_flag | overflow_flag},
    {0xD, "jge", sign_flag | overflow_flag, overflow_flag},
    {0xE, "jle", zero_flag | sign_flag | overflow_flag, sign_flag | overflow_flag},
    {0xF, "jg", sign_flag | overflow_flag, sign_flag},
};

void expect_jcc(const Bytes& bytes, std::uint64_t flags, std::uint64_t expected_ip, const char* name) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.flags = reserved_flag | flags;
    auto expected = regs;
    expected.ip = expected_ip;
    SCOPED_TRACE(fmt::format("{} with flags {:#x}", name, regs.flags));
    run(bytes, regs, memory);
    expect_registers_equal(expected, regs);
}

TEST(Emulator, AllSixteenJccConditionsRel8) {
    for (const auto& test_case : condition_cases) {
        // j<cc> +0x10 (70+cc 10)
        const Bytes bytes = {static_cast<std::uint8_t>(0x70 | test_case.condition), 0x10};
        expect_jcc(bytes, test_case.flags_taken, code_address + 2 + 0x10, test_case.name);
        expect_jcc(bytes, test_case.flags_not_taken, code_address + 2, test_case.name);
    }
}

TEST(Emulator, AllSixteenJccConditionsRel32) {
    for (const auto& test_case : condition_cases) {
        // j<cc> -0x100 (0F 80+cc rel32)
        const Bytes bytes = {0x0F, static_cast<std::uint8_t>(0x80 | test_case.condition), 0x00, 0xFF,
                             0xFF, 0xFF};
        expect_jcc(bytes, test_case.flags_taken, code_address + 6 - 0x100, test_case.name);
        expect_jcc(bytes, test_case.flags_not_taken, code_address + 6, test_case.name);
    }
}

TEST(Emulator, JbeAndJleAcceptEitherOfTheirFlags) {
    expect_jcc({0x76, 0x10}, zero_flag, code_address + 0x12, "jbe");   // jbe: ZF alone
    expect_jcc({0x7E, 0x10}, sign_flag, code_address + 0x12, "jle");   // jle: SF != OF
    expect_jcc({0x7F, 0x10}, zero_flag, code_address + 2, "jg");       // jg: ZF blocks it
    expect_jcc({0x77, 0x10}, carry_flag | zero_flag, code_address + 2, "ja");
}

TEST(Emulator, CallRelPushesTheOriginalReturnAddress) {
    FakeMemory memory;
    auto regs = known_registers();
    auto expected = regs;
    expected.ip = code_address + 5 + 0x100;
    expected.sp = stack_pointer - 8;
    run({0xE8, 0x00, 0x01, 0x00, 0x00}, regs, memory);  // call 0x7f0000001105
    expect_registers_equal(expected, regs);
    EXPECT_EQ(memory.get_u64(stack_pointer - 8), code_address + 5);
}

// --- ret ------------------------------------------------------------------------

TEST(Emulator, RetPopsTheReturnAddress) {
    FakeMemory memory;
    memory.put_u64(stack_pointer, 0x5555'5555'4321);
    auto regs = known_registers();
    auto expected = regs;
    expected.ip = 0x5555'5555'4321;
    expected.sp = stack_pointer + 8;
    run({0xC3}, regs, memory);  // ret
    expect_registers_equal(expected, regs);
}

TEST(Emulator, RetImm16ReleasesTheArgumentsToo) {
    FakeMemory memory;
    memory.put_u64(stack_pointer, 0x5555'5555'4321);
    auto regs = known_registers();
    auto expected = regs;
    expected.ip = 0x5555'5555'4321;
    expected.sp = stack_pointer + 8 + 0x18;
    run({0xC2, 0x18, 0x00}, regs, memory);  // ret 0x18
    expect_registers_equal(expected, regs);
}

// --- Indirect branches ------------------------------------------------------------

TEST(Emulator, JmpThroughRegister) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.r11 = 0x5555'0000'1234;
    auto expected = regs;
    expected.ip = 0x5555'0000'1234;
    run({0x41, 0xFF, 0xE3}, regs, memory);  // jmp r11
    expect_registers_equal(expected, regs);
}

TEST(Emulator, JmpThroughScaledIndexMemory) {
    FakeMemory memory;
    memory.put_u64(data_base + 0x10 + 3 * 8, 0x5555'0000'4444);
    auto regs = known_registers();
    regs.ax = data_base;
    regs.cx = 3;
    auto expected = regs;
    expected.ip = 0x5555'0000'4444;
    run({0xFF, 0x64, 0xC8, 0x10}, regs, memory);  // jmp [rax+rcx*8+0x10]
    expect_registers_equal(expected, regs);
}

TEST(Emulator, NotrackJmpThroughRipRelativeMemory) {
    // notrack jmp [rip+disp] at data_base - 0x1000 - 7, reading data_base + 0x20
    constexpr std::uint64_t address = data_base - 0x1000;
    FakeMemory memory;
    memory.put_u64(data_base + 0x20, 0x5555'0000'7777);
    auto regs = known_registers();
    regs.ip = address;
    auto expected = regs;
    expected.ip = 0x5555'0000'7777;
    // next = address + 7; disp = data_base + 0x20 - next = 0x1020 - 7 = 0x1019
    run({0x3E, 0xFF, 0x25, 0x19, 0x10, 0x00, 0x00}, regs, memory);
    expect_registers_equal(expected, regs);
}

TEST(Emulator, CallThroughRipRelativeMemory) {
    // call [rip+0xffa] at data_base - 0x1000: next = data_base - 0xffa,
    // pointer at data_base.
    constexpr std::uint64_t address = data_base - 0x1000;
    FakeMemory memory;
    memory.put_u64(data_base, 0x5555'0000'8888);
    auto regs = known_registers();
    regs.ip = address;
    auto expected = regs;
    expected.ip = 0x5555'0000'8888;
    expected.sp = stack_pointer - 8;
    run({0xFF, 0x15, 0xFA, 0x0F, 0x00, 0x00}, regs, memory);
    expect_registers_equal(expected, regs);
    EXPECT_EQ(memory.get_u64(stack_pointer - 8), address + 6);
}

TEST(Emulator, CallThroughRegister) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.ax = 0x5555'0000'9999;
    auto expected = regs;
    expected.ip = 0x5555'0000'9999;
    expected.sp = stack_pointer - 8;
    run({0xFF, 0xD0}, regs, memory);  // call rax
    expect_registers_equal(expected, regs);
    EXPECT_EQ(memory.get_u64(stack_pointer - 8), code_address + 2);
}

TEST(Emulator, CallThroughRspRelativeMemoryReadsBeforeThePush) {
    FakeMemory memory;
    memory.put_u64(stack_pointer + 8, 0x5555'0000'AAAA);
    auto regs = known_registers();
    auto expected = regs;
    expected.ip = 0x5555'0000'AAAA;
    expected.sp = stack_pointer - 8;
    run({0xFF, 0x54, 0x24, 0x08}, regs, memory);  // call [rsp+8]
    expect_registers_equal(expected, regs);
    EXPECT_EQ(memory.get_u64(stack_pointer - 8), code_address + 4);
}

TEST(Emulator, CallThroughMemoryWith32BitAddressSizeIgnoresUpperHalfAndWraps) {
    FakeMemory memory;
    memory.put_u64(low_data_base + 0x10, 0x40'1111);
    memory.put_u64(low_data_base + 0x08, 0x40'2222);
    auto regs = known_registers();
    regs.ax = 0xDEAD'BEEF'0000'0000 | low_data_base;
    auto expected = regs;
    expected.ip = 0x40'1111;
    expected.sp = stack_pointer - 8;
    run({0x67, 0xFF, 0x50, 0x10}, regs, memory);  // call [eax+0x10]
    expect_registers_equal(expected, regs);
    EXPECT_EQ(memory.get_u64(stack_pointer - 8), code_address + 4);

    // eax 0xfffffff8 + 0x600010 wraps to 0x600008
    regs = known_registers();
    regs.ax = 0xFFFF'FFF8;
    expected = regs;
    expected.ip = 0x40'2222;
    expected.sp = stack_pointer - 8;
    run({0x67, 0xFF, 0x90, 0x10, 0x00, 0x60, 0x00}, regs, memory);  // call [eax+0x600010]
    expect_registers_equal(expected, regs);
}

// --- loop family -------------------------------------------------------------------

TEST(Emulator, LoopDecrementsRcxAndBranchesWhileNotZero) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.cx = 2;
    auto expected = regs;
    expected.cx = 1;
    expected.ip = code_address;  // loop to itself
    run({0xE2, 0xFE}, regs, memory);
    expect_registers_equal(expected, regs);

    expected.cx = 0;
    expected.ip = code_address + 2;
    run({0xE2, 0xFE}, regs, memory);
    expect_registers_equal(expected, regs);
}

TEST(Emulator, LoopWrapsRcxFromZero) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.cx = 0;
    run({0xE2, 0xFE}, regs, memory);  // loop
    EXPECT_EQ(regs.cx, ~0UL);
    EXPECT_EQ(regs.ip, code_address);
}

TEST(Emulator, LoopeAndLoopneConsultZeroFlag) {
    FakeMemory memory;
    for (bool zero : {false, true}) {
        auto regs = known_registers();
        regs.cx = 5;
        regs.flags = reserved_flag | (zero ? zero_flag : 0);
        auto loope = regs;
        run({0xE1, 0x10}, loope, memory);  // loope +0x10
        EXPECT_EQ(loope.cx, 4u);
        EXPECT_EQ(loope.ip, zero ? code_address + 0x12 : code_address + 2);
        EXPECT_EQ(loope.flags, regs.flags);
        auto loopne = regs;
        run({0xE0, 0x10}, loopne, memory);  // loopne +0x10
        EXPECT_EQ(loopne.cx, 4u);
        EXPECT_EQ(loopne.ip, zero ? code_address + 2 : code_address + 0x12);
    }
}

TEST(Emulator, JrcxzTestsFullRcxWithoutChangingIt) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.cx = 0;
    auto expected = regs;
    expected.ip = code_address + 0x12;
    run({0xE3, 0x10}, regs, memory);  // jrcxz +0x10
    expect_registers_equal(expected, regs);

    regs = known_registers();
    regs.cx = 0x1'0000'0000;
    expected = regs;
    expected.ip = code_address + 2;
    run({0xE3, 0x10}, regs, memory);
    expect_registers_equal(expected, regs);
}

TEST(Emulator, JecxzTestsOnlyEcx) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.cx = 0x1'0000'0000;
    auto expected = regs;
    expected.ip = code_address + 3 + 0x10;
    run({0x67, 0xE3, 0x10}, regs, memory);  // jecxz +0x10
    expect_registers_equal(expected, regs);
}

// --- Memory faults leave everything untouched ----------------------------------------

void expect_fault_changes_nothing(const Bytes& bytes, pt_regs regs, FakeMemory& memory) {
    auto probe = must_analyze(bytes, regs.ip);
    auto access = memory.access();
    const auto before = regs;
    EXPECT_EQ(emulate(probe, regs, access), EmulationStatus::MemoryFault) << disassemble(probe.insn);
    expect_registers_equal(before, regs);
}

TEST(Emulator, PushOntoUnmappedStackFaultsWithoutChangingRegisters) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.sp = stack_base;  // the slot below is unmapped
    expect_fault_changes_nothing({0x55}, regs, memory);              // push rbp
    expect_fault_changes_nothing({0x6A, 0x01}, regs, memory);        // push 1
    expect_fault_changes_nothing({0xE8, 0x00, 0x01, 0x00, 0x00}, regs, memory);  // call rel32
    expect_fault_changes_nothing({0xFF, 0xD0}, regs, memory);        // call rax
}

TEST(Emulator, PopAndRetFromUnmappedStackFaultWithoutChangingRegisters) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.sp = stack_base + stack_size;  // nothing mapped at rsp
    expect_fault_changes_nothing({0x58}, regs, memory);              // pop rax
    expect_fault_changes_nothing({0x5C}, regs, memory);              // pop rsp
    expect_fault_changes_nothing({0xC3}, regs, memory);              // ret
    expect_fault_changes_nothing({0xC2, 0x08, 0x00}, regs, memory);  // ret 8
}

TEST(Emulator, IndirectBranchThroughUnmappedPointerFaultsWithoutWriting) {
    FakeMemory memory;
    auto regs = known_registers();
    regs.ax = 0x1000;  // unmapped
    expect_fault_changes_nothing({0xFF, 0x20}, regs, memory);  // jmp [rax]
    expect_fault_changes_nothing({0xFF, 0x10}, regs, memory);  // call [rax]
    EXPECT_EQ(memory.write_count, 0);
}

TEST(Emulator, CallThroughMemoryOntoReadOnlyStackFaultsWithoutChangingRegisters) {
    FakeMemory memory;
    memory.put_u64(data_base, 0x5555'0000'8888);
    memory.read_only = true;
    auto regs = known_registers();
    regs.ax = data_base;
    expect_fault_changes_nothing({0xFF, 0x10}, regs, memory);  // call [rax]
}

}  // namespace
}  // namespace ukp::x86
