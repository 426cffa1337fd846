// JSON Lines: golden lines, one per FieldValue kind, and every line parsed
// back by the test's own strict parser (output_test_support.hpp), with
// hostile strings: control bytes, quotes, malformed UTF-8.
#include <gtest/gtest.h>

#include "output_test_support.hpp"

namespace ukp::tracer {
namespace {

using namespace testing;

// The "args" object and what follows it, for one field named v.
std::string args_of(FieldValue value) {
    DecodedEvent event = entry_event();
    event.fields = {{"v", std::move(value)}};
    const std::string line = render(Format::Json, event);
    must_parse(line);
    const auto at = line.find(",\"args\":");
    EXPECT_NE(at, std::string::npos) << line;
    return line.substr(at + 8);
}

// The decoded value of string field v.
std::string decoded_string(std::string raw) {
    DecodedEvent event = entry_event();
    event.fields = {{"v", string_value(std::move(raw))}};
    const Json object = must_parse(render(Format::Json, event));
    return object.at("args").at("v").text;
}

TEST(JsonWriter, EntryLineGolden) {
    EXPECT_EQ(render(Format::Json, entry_event()),
              "{\"ts_ns\":12345678901234,\"pid\":1234,\"tid\":1234,\"cpu\":1,\"comm\":\"bash\",\"group\":\"ukprobes\","
              "\"event\":\"myprobe\",\"type\":\"entry\",\"location\":\"malloc+0x0\","
              "\"args\":{\"size\":\"0x10\",\"name\":\"abc\"}}\n");
}

TEST(JsonWriter, ReturnLineCarriesEntryTimeAndDuration) {
    EXPECT_EQ(render(Format::Json, return_event()),
              "{\"ts_ns\":12345678902734,\"pid\":1234,\"tid\":1240,\"cpu\":3,\"comm\":\"worker\",\"group\":\"ukprobes\","
              "\"event\":\"myretprobe\",\"type\":\"return\",\"location\":\"main+0x1c <- malloc\","
              "\"entry_ts_ns\":12345678901234,\"duration_ns\":1500,\"args\":{\"ret\":\"0x55d0c0de0000\"}}\n");
}

TEST(JsonWriter, ReturnStampedBeforeItsEntryHasZeroDuration) {
    DecodedEvent event = return_event();
    event.entry_timestamp_ns = event.timestamp_ns + 10;
    EXPECT_EQ(must_parse(render(Format::Json, event)).at("duration_ns").text, "0");
}

TEST(JsonWriter, NumbersKeepEveryDigit) {
    EXPECT_EQ(args_of(unsigned_value(UINT64_MAX)), "{\"v\":18446744073709551615}}\n");
    EXPECT_EQ(args_of(unsigned_value((std::uint64_t{1} << 53) + 1)), "{\"v\":9007199254740993}}\n");
    EXPECT_EQ(args_of(signed_value(-42)), "{\"v\":-42}}\n");
    EXPECT_EQ(args_of(signed_value(INT64_MIN)), "{\"v\":-9223372036854775808}}\n");
}

TEST(JsonWriter, HexIsAStringCutToItsSize) {
    EXPECT_EQ(args_of(hex_value(0xdeadbeef)), "{\"v\":\"0xdeadbeef\"}}\n");
    EXPECT_EQ(args_of(hex_value(UINT64_MAX, 2)), "{\"v\":\"0xffff\"}}\n");
}

TEST(JsonWriter, CharIsAOneCharacterString) {
    EXPECT_EQ(args_of(char_value('a')), "{\"v\":\"a\"}}\n");
    EXPECT_EQ(args_of(char_value('"')), "{\"v\":\"\\\"\"}}\n");
    EXPECT_EQ(args_of(char_value('\n')), "{\"v\":\"\\n\"}}\n");
    EXPECT_EQ(args_of(char_value(1)), "{\"v\":\"\\u0001\"}}\n");
    // A lone high byte is not UTF-8: its value, as U+00XX.
    EXPECT_EQ(args_of(char_value(0xe9)), "{\"v\":\"\\u00e9\"}}\n");
}

TEST(JsonWriter, StringsAreEscaped) {
    EXPECT_EQ(args_of(string_value("a\"b\\c/d")), "{\"v\":\"a\\\"b\\\\c/d\"}}\n");
    EXPECT_EQ(args_of(string_value("\b\f\n\r\t\x01\x1f\x7f")), "{\"v\":\"\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\"}}\n");
    EXPECT_EQ(args_of(string_value(std::string("nul\0byte", 8))), "{\"v\":\"nul\\u0000byte\"}}\n");
    EXPECT_EQ(decoded_string("line\nbreak"), "line\nbreak");
}

TEST(JsonWriter, WellFormedUtf8PassesThrough) {
    const std::string text = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbf \xf4\x8f\xbf\xbf";
    EXPECT_EQ(decoded_string(text), text);
}

TEST(JsonWriter, MalformedUtf8BecomesReplacementPerByte) {
    const std::string replacement = "\xef\xbf\xbd";
    EXPECT_EQ(decoded_string("a\xff" "b"), "a" + replacement + "b");
    EXPECT_EQ(decoded_string("\x80"), replacement);                           // lone continuation
    EXPECT_EQ(decoded_string("\xc3"), replacement);                           // truncated at the end
    EXPECT_EQ(decoded_string("\xc3("), replacement + "(");                    // bad continuation
    EXPECT_EQ(decoded_string("\xc0\xaf"), replacement + replacement);         // overlong '/'
    EXPECT_EQ(decoded_string("\xe0\x80\xaf"), replacement + replacement + replacement);  // overlong
    EXPECT_EQ(decoded_string("\xed\xa0\x80"), replacement + replacement + replacement);  // surrogate D800
    EXPECT_EQ(decoded_string("\xf4\x90\x80\x80"), replacement + replacement + replacement + replacement);  // > U+10FFFF
    EXPECT_EQ(decoded_string("\xf5"), replacement);
    EXPECT_EQ(args_of(string_value("x\xffy")), "{\"v\":\"x\\ufffdy\"}}\n");
}

TEST(JsonWriter, EveryByteValueInAStringStaysValidJson) {
    std::string all;
    for (int byte = 0; byte < 256; ++byte) {
        all += static_cast<char>(byte);
    }
    // Also every byte after each lead byte, to walk the UTF-8 decoder's edges.
    for (int lead = 0xC0; lead < 256; ++lead) {
        for (int next = 0; next < 256; next += 7) {
            all += static_cast<char>(lead);
            all += static_cast<char>(next);
        }
    }
    decoded_string(all);  // must_parse fails the test if it is not JSON
}

TEST(JsonWriter, SymbolIsAString) {
    EXPECT_EQ(args_of(symbol_value("main+0x10/0x40")), "{\"v\":\"main+0x10/0x40\"}}\n");
    EXPECT_EQ(args_of(symbol_value("", 0x401000)), "{\"v\":\"0x401000\"}}\n");
}

TEST(JsonWriter, FaultIsNullAndNamedInFaults) {
    EXPECT_EQ(args_of(fault_value()), "{\"v\":null},\"faults\":[\"v\"]}\n");
}

TEST(JsonWriter, NoFaultsKeyWithoutFaults) {
    EXPECT_EQ(render(Format::Json, entry_event()).find("faults"), std::string::npos);
}

TEST(JsonWriter, ArrayIsAJsonArrayAndNamesFaultedElements) {
    EXPECT_EQ(args_of(array_value({unsigned_value(1), fault_value(), hex_value(0xff), fault_value()})),
              "{\"v\":[1,null,\"0xff\",null]},\"faults\":[\"v[1]\",\"v[3]\"]}\n");
    EXPECT_EQ(args_of(array_value({})), "{\"v\":[]}}\n");
}

TEST(JsonWriter, SeveralFaultedFieldsAreAllListed) {
    DecodedEvent event = entry_event();
    event.fields = {{"a", fault_value()}, {"b", unsigned_value(1)}, {"c", fault_value()}};
    const Json object = must_parse(render(Format::Json, event));
    const Json& faults = object.at("faults");
    ASSERT_EQ(faults.items.size(), 2u);
    EXPECT_EQ(faults.items[0].text, "a");
    EXPECT_EQ(faults.items[1].text, "c");
}

TEST(JsonWriter, FaultsDoNotLeakIntoTheNextEvent) {
    DecodedEvent faulted = entry_event();
    faulted.fields = {{"a", fault_value()}};
    const std::vector<DecodedEvent> events = {faulted, entry_event()};
    const std::string text = render(Format::Json, events);
    const auto second_line = text.substr(text.find('\n') + 1);
    EXPECT_EQ(second_line.find("faults"), std::string::npos) << text;
}

TEST(JsonWriter, HostileCommAndNamesStayValid) {
    DecodedEvent event = entry_event();
    event.comm = "evil\"\n\xff";
    event.location = "sym\\+0x1";
    const Json object = must_parse(render(Format::Json, event));
    EXPECT_EQ(object.at("comm").text, "evil\"\n\xef\xbf\xbd");
    EXPECT_EQ(object.at("location").text, "sym\\+0x1");
}

TEST(JsonWriter, OneObjectPerLine) {
    const std::vector<DecodedEvent> events = {entry_event(), return_event(), entry_event()};
    const std::string text = render(Format::Json, events);
    std::size_t start = 0;
    int lines = 0;
    while (start < text.size()) {
        const auto end = text.find('\n', start);
        ASSERT_NE(end, std::string::npos);
        EXPECT_EQ(must_parse(text.substr(start, end - start)).type, Json::Type::Object);
        start = end + 1;
        ++lines;
    }
    EXPECT_EQ(lines, 3);
}

TEST(JsonWriter, NothingWrittenIsAnEmptyFile) {
    EXPECT_EQ(render(Format::Json, std::span<const DecodedEvent>{}), "");
}

}  // namespace
}  // namespace ukp::tracer
