// The test's JSON parser must reject what is not JSON, or the writer tests
// that lean on it would pass on broken output.
#include <gtest/gtest.h>

#include "output_test_support.hpp"

namespace ukp::tracer {
namespace {

using testing::JsonParser;

TEST(TestJsonParser, AcceptsJson) {
    for (const std::string_view text :
         {"{}", "[]", "0", "-0.5e+3", "\"\\u00e9\\ud83d\\ude00\\/\"", "{\"a\":[1,{\"b\":null}],\"c\":true}",
          " \n[false] \n", "\"caf\xc3\xa9\""}) {
        EXPECT_TRUE(JsonParser::parse(text).has_value()) << text;
    }
}

TEST(TestJsonParser, RejectsWhatIsNotJson) {
    for (const std::string_view text :
         {"", "{", "[1,]", "{\"a\":1,}", "{a:1}", "01", "1.", "+1", "\"\x01\"", "\"\xff\"", "\"\xc0\xaf\"",
          "\"\xed\xa0\x80\"", "\"\\x41\"", "\"\\ud800\"", "\"\\udc00\"", "[1] [2]", "nul", "{\"traceEvents\":["}) {
        EXPECT_FALSE(JsonParser::parse(text).has_value()) << text;
    }
}

TEST(TestJsonParser, DecodesEscapes) {
    const auto value = JsonParser::parse("\"a\\n\\u0041\\ud83d\\ude00\"");
    ASSERT_TRUE(value.has_value());
    EXPECT_EQ(value->text, "a\nA\xf0\x9f\x98\x80");
}

}  // namespace
}  // namespace ukp::tracer
