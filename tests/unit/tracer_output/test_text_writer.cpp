// The text writer against the kernel's trace_pipe line, byte for byte:
// context columns, the location, and one golden per FieldValue kind.
#include <gtest/gtest.h>

#include "output_test_support.hpp"

namespace ukp::tracer {
namespace {

using namespace testing;

// The args part of the line for one field: everything after "(location)".
std::string text_of(FieldValue value) {
    DecodedEvent event = entry_event();
    event.fields = {{"v", std::move(value)}};
    const std::string line = render(Format::Text, event);
    const std::string prefix = "(malloc+0x0)";
    const auto at = line.find(prefix);
    EXPECT_NE(at, std::string::npos) << line;
    return line.substr(at + prefix.size());
}

TEST(TextWriter, EntryLineMatchesTracePipeLayout) {
    EXPECT_EQ(render(Format::Text, entry_event()),
              "            bash-1234    [001] ..... 12345.678901: myprobe: (malloc+0x0) size=0x10 name=\"abc\"\n");
}

TEST(TextWriter, ReturnLineShowsCallerArrowFunction) {
    EXPECT_EQ(render(Format::Text, return_event()),
              "          worker-1240    [003] ..... 12345.678903: myretprobe: (main+0x1c <- malloc) "
              "ret=0x55d0c0de0000\n");
}

TEST(TextWriter, TimestampRoundsToNearestMicrosecondAsNs2usecs) {
    DecodedEvent event = entry_event();
    event.fields.clear();
    event.timestamp_ns = 1'000'000'499;  // 1.000000499 s -> .000000
    EXPECT_NE(render(Format::Text, event).find(" 1.000000: "), std::string::npos);
    event.timestamp_ns = 1'000'000'500;  // -> .000001
    EXPECT_NE(render(Format::Text, event).find(" 1.000001: "), std::string::npos);
    event.timestamp_ns = 1'999'999'500;  // rounds up into the next second
    EXPECT_NE(render(Format::Text, event).find(" 2.000000: "), std::string::npos);
    event.timestamp_ns = 0;
    EXPECT_NE(render(Format::Text, event).find("] .....     0.000000: "), std::string::npos);
    event.timestamp_ns = UINT64_MAX;  // must not wrap to 0
    EXPECT_NE(render(Format::Text, event).find(" 18446744073.709552: "), std::string::npos);
}

TEST(TextWriter, LongCommAndTidAreNotCut) {
    DecodedEvent event = entry_event();
    event.fields.clear();
    event.comm = "a-very-long-name";  // 16 bytes: no padding
    event.tid = 12345678;             // 8 digits: no padding
    event.cpu = 123;
    EXPECT_EQ(render(Format::Text, event), "a-very-long-name-12345678 [123] ..... 12345.678901: myprobe: (malloc+0x0)\n");
}

TEST(TextWriter, UnsignedIsDecimal) {
    EXPECT_EQ(text_of(unsigned_value(0)), " v=0\n");
    EXPECT_EQ(text_of(unsigned_value(UINT64_MAX)), " v=18446744073709551615\n");
}

TEST(TextWriter, SignedIsDecimalWithSign) {
    EXPECT_EQ(text_of(signed_value(-1)), " v=-1\n");
    EXPECT_EQ(text_of(signed_value(INT64_MIN)), " v=-9223372036854775808\n");
    EXPECT_EQ(text_of(signed_value(42)), " v=42\n");
}

TEST(TextWriter, HexIsUnpaddedAndCutToItsSize) {
    EXPECT_EQ(text_of(hex_value(0)), " v=0x0\n");
    EXPECT_EQ(text_of(hex_value(UINT64_MAX)), " v=0xffffffffffffffff\n");
    // x8 of a byte the decoder sign-extended: the kernel prints the byte.
    EXPECT_EQ(text_of(hex_value(UINT64_MAX, 1)), " v=0xff\n");
    EXPECT_EQ(text_of(hex_value(0x1234'5678'9abc, 4)), " v=0x56789abc\n");
}

TEST(TextWriter, CharIsQuotedAndNonPrintableIsEscaped) {
    EXPECT_EQ(text_of(char_value('a')), " v='a'\n");
    EXPECT_EQ(text_of(char_value(' ')), " v=' '\n");
    EXPECT_EQ(text_of(char_value('\n')), " v='\\x0a'\n");
    EXPECT_EQ(text_of(char_value(0)), " v='\\x00'\n");
    EXPECT_EQ(text_of(char_value(0x7f)), " v='\\x7f'\n");
    EXPECT_EQ(text_of(char_value(0xe9)), " v='\\xe9'\n");
}

TEST(TextWriter, StringIsQuotedRawExceptControlBytes) {
    EXPECT_EQ(text_of(string_value("")), " v=\"\"\n");
    // Quotes and backslashes stay raw, as the kernel's "\"%s\"" prints them.
    EXPECT_EQ(text_of(string_value("say \"hi\" \\o/")), " v=\"say \"hi\" \\o/\"\n");
    // A newline must not end the event's line.
    EXPECT_EQ(text_of(string_value("two\nlines\t\x1b[0m")), " v=\"two\\x0alines\\x09\\x1b[0m\"\n");
    EXPECT_EQ(text_of(string_value("caf\xc3\xa9")), " v=\"caf\xc3\xa9\"\n");
}

TEST(TextWriter, SymbolIsBareOrHexWhenUnknown) {
    EXPECT_EQ(text_of(symbol_value("main+0x10/0x40")), " v=main+0x10/0x40\n");
    EXPECT_EQ(text_of(symbol_value("", 0x7f00dead0000)), " v=0x7f00dead0000\n");
}

TEST(TextWriter, FaultPrintsLikeTheKernel) { EXPECT_EQ(text_of(fault_value()), " v=(fault)\n"); }

TEST(TextWriter, ArrayIsBracedCommaSeparated) {
    EXPECT_EQ(text_of(array_value({unsigned_value(1), signed_value(-2), fault_value(), string_value("x")})),
              " v={1,-2,(fault),\"x\"}\n");
    EXPECT_EQ(text_of(array_value({})), " v={}\n");
}

TEST(TextWriter, FieldsKeepTheirOrder) {
    DecodedEvent event = entry_event();
    event.fields = {{"b", unsigned_value(2)}, {"a", unsigned_value(1)}, {"c", unsigned_value(3)}};
    EXPECT_NE(render(Format::Text, event).find("(malloc+0x0) b=2 a=1 c=3\n"), std::string::npos);
}

TEST(TextWriter, ControlBytesInCommAreEscapedAndCountForPadding) {
    DecodedEvent event = entry_event();
    event.fields.clear();
    event.comm = "x\ny";  // prints as 6 bytes: x\x0ay
    EXPECT_EQ(render(Format::Text, event), "          x\\x0ay-1234    [001] ..... 12345.678901: myprobe: (malloc+0x0)\n");
}

TEST(TextWriter, ManyEventsComeOutInOrder) {
    std::vector<DecodedEvent> events;
    for (int i = 0; i < 3; ++i) {
        events.push_back(entry_event());
        events.back().fields = {{"i", unsigned_value(static_cast<std::uint64_t>(i))}};
    }
    const std::string text = render(Format::Text, events);
    EXPECT_LT(text.find(" i=0\n"), text.find(" i=1\n"));
    EXPECT_LT(text.find(" i=1\n"), text.find(" i=2\n"));
}

}  // namespace
}  // namespace ukp::tracer
