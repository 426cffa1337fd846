// Typed entry probes: the handler receives the probed function's own
// arguments, decoded from the registers and the stack by the System V ABI.
// Each target below is compiled C++, so the compiler, not this file, decides
// where each argument travels; `noipa` keeps it from changing a target's
// calling convention or inlining it into the test.  Each test checks one
// placement rule of the ABI against the values the handler sees.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "targets.hpp"
#include "ukprobes/entry_probe.hpp"

namespace {

enum class Color : std::uint8_t { Red = 1, Green = 2, Blue = 3 };
struct IntPair {
    int first, second;
};
struct LongPair {
    long first, second;
};
struct Big {  // 32 bytes: MEMORY class, floating-point members and all
    long tag;
    double weight;
    long count;
    double ratio;
};
struct Node {
    int value;
    Node* next;
};
__extension__ typedef __int128 Int128;

// What the handler saw, reset by each test.
struct Seen {
    std::array<long, 10> values{};
    const void* pointer = nullptr;
    const char* text = nullptr;
    bool flag = false;
    Color color{};
    IntPair int_pair{};
    LongPair long_pair{};
    Big big{};
    Int128 wide = 0;
    int calls = 0;
} seen;

}  // namespace

// The targets.  External linkage and C names so that they can be probed by
// symbol name as well as by address.
extern "C" {
__attribute__((noipa)) long ep_scalars(int a, unsigned char b, const char* text, bool flag, Color color,
                                       std::int64_t wide) {
    return a + b + text[0] + flag + static_cast<int>(color) + wide;
}
__attribute__((noipa)) long ep_eight(long a, long b, long c, long d, long e, long f, long g, long h) {
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h;
}
__attribute__((noipa)) long ep_ten(int a, short b, long c, unsigned d, long e, char f, long g, int h, short i,
                                   unsigned char j) {
    return a + b + c + d + e + f + g + h + i + j;
}
__attribute__((noipa)) long ep_int_pair(IntPair pair, int after) { return pair.first * 100 + pair.second + after; }
__attribute__((noipa)) long ep_long_pair(int before, LongPair pair, int after) {
    return before + pair.first + pair.second + after;
}
// Five longs leave one register: the 16-byte pair goes to the stack whole,
// and the long after it still takes r9.
__attribute__((noipa)) long ep_pair_spills(long a, long b, long c, long d, long e, LongPair pair, long after) {
    return a + b + c + d + e + pair.first + pair.second + after;
}
__attribute__((noipa)) long ep_big(int before, Big big, int after) {
    return before + big.tag + big.count + static_cast<long>(big.weight + big.ratio) + after;
}
__attribute__((noipa)) int ep_list_sum(const Node* head) {
    int sum = 0;
    for (; head != nullptr; head = head->next) sum += head->value;
    return sum;
}
__attribute__((noipa)) long ep_references(int& counter, const IntPair& pair, long&& moved) {
    ++counter;
    return pair.first + moved;
}
__attribute__((noipa)) long ep_mixed(char tag, LongPair pair, int* out, short small, IntPair ints, std::uint64_t big,
                                     bool flag, const char* name, long last) {
    *out = tag + small;
    return pair.first + ints.second + static_cast<long>(big) + flag + name[0] + last;
}
__attribute__((noipa)) long ep_int128_registers(int before, Int128 wide) { return before + static_cast<long>(wide >> 64); }
// Five longs leave r9 only: the __int128 goes to the stack and `after` takes r9.
__attribute__((noipa)) long ep_int128_spills(long a, long b, long c, long d, long e, Int128 wide, long after) {
    return a + b + c + d + e + static_cast<long>(wide) + after;
}
// On the stack an __int128 is 16-byte aligned: `small` at sp+8, `wide` at sp+24.
__attribute__((noipa)) long ep_int128_aligned(long a, long b, long c, long d, long e, long f, int small, Int128 wide) {
    return a + b + c + d + e + f + small + static_cast<long>(wide);
}
// The hidden result pointer takes rdi: `a` is in rsi.
__attribute__((noipa)) Big ep_make_big(long a, long b) { return Big{a, 1.5, b, 2.5}; }
__attribute__((noipa)) long ep_views(std::string_view text, std::span<const int> numbers) {
    return static_cast<long>(text.size() + numbers.size());
}
__attribute__((noipa)) long ep_by_name(int a, int b) { return a * b; }
}

namespace {

// The probe kind the engine chose for an address, as listed.
std::string kind_at(const void* address) {
    for (const auto& probe : ukp::list_probes())
        if (probe.address == reinterpret_cast<std::uint64_t>(address)) return probe.kind;
    return "none";
}

template <class Probe>
void register_or_fail(Probe& probe) {
    auto registered = probe.register_probe();
    ASSERT_TRUE(registered) << registered.error().message;
}

class EntryProbe : public ::testing::Test {
protected:
    void SetUp() override { seen = Seen{}; }
};

TEST_F(EntryProbe, IntegersCharPointerBoolEnumAndInt64) {
    const char* text = "probe";
    ukp::EntryProbe probe{&ep_scalars, [](int a, unsigned char b, const char* s, bool flag, Color color,
                                          std::int64_t wide) {
                              seen.values[0] = a;
                              seen.values[1] = b;
                              seen.text = s;
                              seen.flag = flag;
                              seen.color = color;
                              seen.values[2] = wide;
                          }};
    register_or_fail(probe);
    const long result = ep_scalars(-7, 200, text, true, Color::Blue, -(std::int64_t{1} << 40));
    EXPECT_EQ(result, -7 + 200 + 'p' + 1 + 3 - (std::int64_t{1} << 40));
    EXPECT_EQ(seen.values[0], -7);
    EXPECT_EQ(seen.values[1], 200);
    EXPECT_EQ(seen.text, text);
    EXPECT_TRUE(seen.flag);
    EXPECT_EQ(seen.color, Color::Blue);
    EXPECT_EQ(seen.values[2], -(std::int64_t{1} << 40));
    EXPECT_EQ(probe.nhit(), 1u);
}

// Registers take the first six; sp+8 and sp+16 the rest.
TEST_F(EntryProbe, EightIntegerArgumentsSpillTwoToTheStack) {
    ukp::EntryProbe probe{&ep_eight, [](long a, long b, long c, long d, long e, long f, long g, long h) {
                              seen.values = {a, b, c, d, e, f, g, h, 0, 0};
                          }};
    register_or_fail(probe);
    EXPECT_EQ(ep_eight(1, 2, 3, 4, 5, 6, 7, 8), 204);
    EXPECT_EQ(seen.values, (std::array<long, 10>{1, 2, 3, 4, 5, 6, 7, 8, 0, 0}));
}

// Narrow types on the stack still take a whole 8-byte slot each.
TEST_F(EntryProbe, TenMixedWidthArgumentsSpillFourToTheStack) {
    ukp::EntryProbe probe{&ep_ten, [](int a, short b, long c, unsigned d, long e, char f, long g, int h, short i,
                                      unsigned char j) { seen.values = {a, b, c, d, e, f, g, h, i, j}; }};
    register_or_fail(probe);
    EXPECT_EQ(ep_ten(-1, -2, -3, 4, -5, -6, -7, -8, -9, 250), -41 + 4 + 250);
    EXPECT_EQ(seen.values, (std::array<long, 10>{-1, -2, -3, 4, -5, -6, -7, -8, -9, 250}));
}

TEST_F(EntryProbe, StructOfTwoIntsTravelsInOneRegister) {
    ukp::EntryProbe probe{&ep_int_pair, [](IntPair pair, int after) {
                              seen.int_pair = pair;
                              seen.values[0] = after;
                          }};
    register_or_fail(probe);
    EXPECT_EQ(ep_int_pair({-3, 44}, 5), -300 + 44 + 5);
    EXPECT_EQ(seen.int_pair.first, -3);
    EXPECT_EQ(seen.int_pair.second, 44);
    EXPECT_EQ(seen.values[0], 5);
}

TEST_F(EntryProbe, SixteenByteStructOfTwoLongsTravelsInTwoRegisters) {
    ukp::EntryProbe probe{&ep_long_pair, [](int before, LongPair pair, int after) {
                              seen.values[0] = before;
                              seen.long_pair = pair;
                              seen.values[1] = after;
                          }};
    register_or_fail(probe);
    EXPECT_EQ(ep_long_pair(1, {1L << 40, -(1L << 41)}, 2), 3 + (1L << 40) - (1L << 41));
    EXPECT_EQ(seen.values[0], 1);
    EXPECT_EQ(seen.long_pair.first, 1L << 40);
    EXPECT_EQ(seen.long_pair.second, -(1L << 41));
    EXPECT_EQ(seen.values[1], 2);
}

TEST_F(EntryProbe, SixteenByteStructGoesWholeToTheStackAndLaterArgumentsStillUseRegisters) {
    ukp::EntryProbe probe{&ep_pair_spills, [](long a, long b, long c, long d, long e, LongPair pair, long after) {
                              seen.values = {a, b, c, d, e, after, 0, 0, 0, 0};
                              seen.long_pair = pair;
                          }};
    register_or_fail(probe);
    EXPECT_EQ(ep_pair_spills(1, 2, 3, 4, 5, {60, 70}, 8), 153);
    EXPECT_EQ(seen.values, (std::array<long, 10>{1, 2, 3, 4, 5, 8, 0, 0, 0, 0}));
    EXPECT_EQ(seen.long_pair.first, 60);
    EXPECT_EQ(seen.long_pair.second, 70);
}

TEST_F(EntryProbe, LargeStructIsCopiedFromTheStackEvenWithDoubleMembers) {
    ukp::EntryProbe probe{&ep_big, [](int before, Big big, int after) {
                              seen.values[0] = before;
                              seen.big = big;
                              seen.values[1] = after;
                          }};
    register_or_fail(probe);
    EXPECT_EQ(ep_big(1, {10, 0.25, 20, 0.75}, 2), 34);
    EXPECT_EQ(seen.values[0], 1);
    EXPECT_EQ(seen.big.tag, 10);
    EXPECT_EQ(seen.big.weight, 0.25);
    EXPECT_EQ(seen.big.count, 20);
    EXPECT_EQ(seen.big.ratio, 0.75);
    EXPECT_EQ(seen.values[1], 2);
}

TEST_F(EntryProbe, PointerToStructIsTheCallersPointer) {
    Node tail{2, nullptr};
    Node head{1, &tail};
    ukp::EntryProbe probe{&ep_list_sum, [](const Node* node) {
                              seen.pointer = node;
                              seen.values[0] = node->next->value;
                          }};
    register_or_fail(probe);
    EXPECT_EQ(ep_list_sum(&head), 3);
    EXPECT_EQ(seen.pointer, &head);
    EXPECT_EQ(seen.values[0], 2);
}

TEST_F(EntryProbe, ReferenceParametersBindToTheCallersObjects) {
    int counter = 41;
    const IntPair pair{7, 8};
    const void* counter_seen = nullptr;
    const void* pair_seen = nullptr;
    ukp::EntryProbe probe{&ep_references, [&](int& count, const IntPair& p, long&& moved) {
                              counter_seen = &count;
                              pair_seen = &p;
                              seen.values = {count, p.first, moved, 0, 0, 0, 0, 0, 0, 0};
                          }};
    register_or_fail(probe);
    EXPECT_EQ(ep_references(counter, pair, 100L), 107);
    EXPECT_EQ(counter_seen, &counter);
    EXPECT_EQ(pair_seen, &pair);
    EXPECT_EQ(seen.values[0], 41) << "the handler runs before the function";
    EXPECT_EQ(seen.values[1], 7);
    EXPECT_EQ(seen.values[2], 100);
    EXPECT_EQ(counter, 42);
}

// tag rdi, pair rsi:rdx, out rcx, small r8, ints r9, big sp+8, flag sp+16,
// name sp+24, last sp+32.
TEST_F(EntryProbe, MixedSignatureOfScalarsStructsAndPointers) {
    int out = 0;
    ukp::EntryProbe probe{&ep_mixed, [](char tag, LongPair pair, int* out_pointer, short small, IntPair ints,
                                        std::uint64_t big, bool flag, const char* name, long last) {
                              seen.values = {tag, small, static_cast<long>(big), last, 0, 0, 0, 0, 0, 0};
                              seen.long_pair = pair;
                              seen.pointer = out_pointer;
                              seen.int_pair = ints;
                              seen.flag = flag;
                              seen.text = name;
                          }};
    register_or_fail(probe);
    const char* name = "n";
    EXPECT_EQ(ep_mixed('x', {5, 6}, &out, -4, {7, 8}, 1ull << 50, true, name, -9),
              5 + 8 + (1l << 50) + 1 + 'n' - 9);
    EXPECT_EQ(out, 'x' - 4);
    EXPECT_EQ(seen.values, (std::array<long, 10>{'x', -4, 1l << 50, -9, 0, 0, 0, 0, 0, 0}));
    EXPECT_EQ(seen.long_pair.first, 5);
    EXPECT_EQ(seen.long_pair.second, 6);
    EXPECT_EQ(seen.pointer, &out);
    EXPECT_EQ(seen.int_pair.first, 7);
    EXPECT_EQ(seen.int_pair.second, 8);
    EXPECT_TRUE(seen.flag);
    EXPECT_EQ(seen.text, name);
}

TEST_F(EntryProbe, Int128TakesTwoConsecutiveRegisters) {
    ukp::EntryProbe probe{&ep_int128_registers, [](int before, Int128 wide) {
                              seen.values[0] = before;
                              seen.wide = wide;
                          }};
    register_or_fail(probe);
    const Int128 wide = (Int128{0x1234} << 64) | 0x5678;
    EXPECT_EQ(ep_int128_registers(3, wide), 3 + 0x1234);
    EXPECT_EQ(seen.values[0], 3);
    EXPECT_TRUE(seen.wide == wide);
}

TEST_F(EntryProbe, Int128GoesToTheStackWhenOneRegisterIsLeft) {
    ukp::EntryProbe probe{&ep_int128_spills, [](long a, long b, long c, long d, long e, Int128 wide, long after) {
                              seen.values = {a, b, c, d, e, after, 0, 0, 0, 0};
                              seen.wide = wide;
                          }};
    register_or_fail(probe);
    const Int128 wide = (Int128{-2} << 64) | 40;
    EXPECT_EQ(ep_int128_spills(1, 2, 3, 4, 5, wide, 6), 61);
    EXPECT_EQ(seen.values, (std::array<long, 10>{1, 2, 3, 4, 5, 6, 0, 0, 0, 0}));
    EXPECT_TRUE(seen.wide == wide);
}

TEST_F(EntryProbe, Int128OnTheStackIsSixteenByteAligned) {
    ukp::EntryProbe probe{&ep_int128_aligned,
                          [](long a, long b, long c, long d, long e, long f, int small, Int128 wide) {
                              seen.values = {a, b, c, d, e, f, small, 0, 0, 0};
                              seen.wide = wide;
                          }};
    register_or_fail(probe);
    const Int128 wide = (Int128{7} << 64) | 1000;
    EXPECT_EQ(ep_int128_aligned(1, 2, 3, 4, 5, 6, 7, wide), 1028);
    EXPECT_EQ(seen.values, (std::array<long, 10>{1, 2, 3, 4, 5, 6, 7, 0, 0, 0}));
    EXPECT_TRUE(seen.wide == wide);
}

TEST_F(EntryProbe, HiddenResultPointerShiftsArgumentsByOneRegister) {
    ukp::EntryProbe probe{&ep_make_big, [](long a, long b) { seen.values = {a, b, 0, 0, 0, 0, 0, 0, 0, 0}; }};
    register_or_fail(probe);
    EXPECT_EQ(ep_make_big(11, 22).count, 22);
    EXPECT_EQ(seen.values[0], 11);
    EXPECT_EQ(seen.values[1], 22);
}

TEST_F(EntryProbe, StringViewAndSpanByValueTravelAsPointerAndSize) {
    const std::string_view text = "abcdef";
    const int numbers[] = {1, 2, 3};
    const void* data_seen = nullptr;
    ukp::EntryProbe probe{&ep_views, [&](std::string_view s, std::span<const int> n) {
                              seen.text = s.data();
                              seen.values[0] = static_cast<long>(s.size());
                              data_seen = n.data();
                              seen.values[1] = static_cast<long>(n.size());
                          }};
    register_or_fail(probe);
    EXPECT_EQ(ep_views(text, numbers), 9);
    EXPECT_EQ(seen.text, text.data());
    EXPECT_EQ(seen.values[0], 6);
    EXPECT_EQ(data_seen, numbers);
    EXPECT_EQ(seen.values[1], 3);
}

TEST_F(EntryProbe, HandlerTakingRegsSeesTheProbeAddress) {
    std::uint64_t ip = 0;
    ukp::EntryProbe probe{&ep_by_name, [&](ukp::Regs& regs, int a, int b) {
                              ip = regs.ip;
                              seen.values = {a, b, 0, 0, 0, 0, 0, 0, 0, 0};
                          }};
    register_or_fail(probe);
    EXPECT_EQ(ep_by_name(6, 7), 42);
    EXPECT_EQ(ip, reinterpret_cast<std::uint64_t>(&ep_by_name));
    EXPECT_EQ(seen.values[0], 6);
    EXPECT_EQ(seen.values[1], 7);
}

TEST_F(EntryProbe, BySymbolNameWithTheSignatureSpelledOut) {
    ukp::EntryProbe<long(int, int)> probe{"ep_by_name", [](int a, int b) {
                                              seen.values = {a, b, 0, 0, 0, 0, 0, 0, 0, 0};
                                          }};
    register_or_fail(probe);
    EXPECT_EQ(probe.kprobe().address(), reinterpret_cast<void*>(&ep_by_name));
    EXPECT_EQ(ep_by_name(-3, 5), -15);
    EXPECT_EQ(seen.values[0], -3);
    EXPECT_EQ(seen.values[1], 5);
}

TEST_F(EntryProbe, OptimizedProbeDecodesArguments) {
    ukp::EntryProbe probe{&opt_plain, [](int x) { seen.values[0] = x; }};
    register_or_fail(probe);
    ASSERT_EQ(kind_at(function_address(opt_plain)), "optimized") << ukp::format_probe_list();
    EXPECT_EQ(opt_plain(-40), -37);
    EXPECT_EQ(seen.values[0], -40);
}

TEST_F(EntryProbe, OptimizedProbeOnCompiledFunctionDecodesStackArguments) {
    ukp::EntryProbe probe{&ep_ten, [](int a, short b, long c, unsigned d, long e, char f, long g, int h, short i,
                                      unsigned char j) { seen.values = {a, b, c, d, e, f, g, h, i, j}; }};
    register_or_fail(probe);
    if (kind_at(reinterpret_cast<void*>(&ep_ten)) != "optimized")
        GTEST_SKIP() << "the compiler's entry of ep_ten is not optimizable here:\n" << ukp::format_probe_list();
    EXPECT_EQ(ep_ten(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 55);
    EXPECT_EQ(seen.values, (std::array<long, 10>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
}

TEST_F(EntryProbe, Int3PathWithNoOptimizeFlagDecodesStackArguments) {
    ukp::EntryProbe probe{&ep_ten, [](int a, short b, long c, unsigned d, long e, char f, long g, int h, short i,
                                      unsigned char j) { seen.values = {a, b, c, d, e, f, g, h, i, j}; }};
    probe.kprobe().flags |= ukp::flag_no_optimize;
    register_or_fail(probe);
    EXPECT_NE(kind_at(reinterpret_cast<void*>(&ep_ten)), "optimized");
    EXPECT_EQ(ep_ten(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 55);
    EXPECT_EQ(seen.values, (std::array<long, 10>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
    EXPECT_EQ(probe.nhit(), 1u);
}

TEST_F(EntryProbe, UnregisterStopsTheHandlerAndTwiceIsNotRegistered) {
    ukp::EntryProbe probe{&ep_by_name, [](int, int) { ++seen.calls; }};
    register_or_fail(probe);
    EXPECT_EQ(ep_by_name(1, 1), 1);
    EXPECT_TRUE(probe.unregister_probe());
    EXPECT_EQ(ep_by_name(1, 1), 1);
    EXPECT_EQ(seen.calls, 1);
    EXPECT_EQ(probe.nhit(), 1u);
    EXPECT_EQ(probe.nmissed(), 0u);
    auto again = probe.unregister_probe();
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ukp::Errc::NotRegistered);
}

// The return value, read at the `ret` of push_target (x + 5).
TEST(TypedReturnValue, IntFromRaxAtTheReturn) {
    int result = 0;
    ukp::Kprobe probe{.addr = push_target_ret, .pre_handler = [&](ukp::Kprobe&, ukp::Regs& regs) {
                          result = ukp::typed_return_value<int>(regs);
                          return 0;
                      }};
    ASSERT_TRUE(ukp::register_kprobe(probe));
    EXPECT_EQ(push_target(-10), -5);
    EXPECT_EQ(result, -5);
}

TEST(TypedReturnValue, SixteenByteValuesFromRaxAndRdx) {
    ukp::Regs regs{};
    regs.ax = 0x1111;
    regs.dx = static_cast<unsigned long>(-2);
    const auto pair = ukp::typed_return_value<LongPair>(regs);
    EXPECT_EQ(pair.first, 0x1111);
    EXPECT_EQ(pair.second, -2);
    EXPECT_TRUE(ukp::typed_return_value<Int128>(regs) == ((Int128{-2} << 64) | 0x1111));
    EXPECT_EQ(ukp::typed_return_value<short>(regs), 0x1111);
}

TEST(TypedReturnValue, HiddenPointerResultIsReadThroughRax) {
    const Big big{1, 2.0, 3, 4.0};
    ukp::Regs regs{};
    regs.ax = reinterpret_cast<unsigned long>(&big);
    EXPECT_EQ(ukp::typed_return_value<Big>(regs).count, 3);
}

}  // namespace

// Floating-point arguments: the next of xmm0-7, counted apart from the
// integer registers, then the stack.
extern "C" {
__attribute__((noipa)) double ep_doubles(double a, long b, float c, double d) { return a + b + c + d; }
__attribute__((noipa)) double ep_ten_doubles(double a, double b, double c, double d, double e, double f, double g,
                                             double h, double i, double j) {
    return a + b + c + d + e + f + g + h + i + j;
}
}

namespace {

class FloatingPointArguments : public ::testing::TestWithParam<unsigned> {};

TEST_P(FloatingPointArguments, DoublesAndFloatsComeFromTheVectorRegisters) {
    double seen_a = 0, seen_d = 0;
    long seen_b = 0;
    float seen_c = 0;
    ukp::EntryProbe probe{&ep_doubles, [&](double a, long b, float c, double d) {
                              seen_a = a;
                              seen_b = b;
                              seen_c = c;
                              seen_d = d;
                          }};
    probe.kprobe().flags = GetParam();
    register_or_fail(probe);
    EXPECT_EQ(kind_at(reinterpret_cast<void*>(&ep_doubles)) == "optimized", GetParam() == 0)
        << ukp::format_probe_list();
    EXPECT_EQ(ep_doubles(1.25, 7, 2.5f, -3.75), 1.25 + 7 + 2.5 - 3.75);
    EXPECT_EQ(seen_a, 1.25);
    EXPECT_EQ(seen_b, 7);
    EXPECT_EQ(seen_c, 2.5f);
    EXPECT_EQ(seen_d, -3.75);
}

TEST_P(FloatingPointArguments, NinthAndTenthDoublesComeFromTheStack) {
    std::array<double, 10> seen_values{};
    ukp::EntryProbe probe{&ep_ten_doubles, [&](double a, double b, double c, double d, double e, double f, double g,
                                               double h, double i, double j) {
                              seen_values = {a, b, c, d, e, f, g, h, i, j};
                          }};
    probe.kprobe().flags = GetParam();
    register_or_fail(probe);
    EXPECT_EQ(ep_ten_doubles(0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5), 50.0);
    EXPECT_EQ(seen_values, (std::array<double, 10>{0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5}));
}

INSTANTIATE_TEST_SUITE_P(Paths, FloatingPointArguments, ::testing::Values(0u, ukp::flag_no_optimize),
                         [](const auto& info) { return info.param == 0 ? "optimized" : "int3"; });

TEST(ProbedVectorRegister, IsUnavailableOutsideAHandler) {
    unsigned char out[16];
    EXPECT_FALSE(ukp::probed_vector_register(0, out));
}

}  // namespace
