// The `if FILTER` language: what a compiled filter matches, over the
// values the hit path would hand it.
#include <gtest/gtest.h>

#include <vector>

#include "tracer/definition.hpp"

namespace ukp::tracer {
namespace {

using Value = Filter::Value;

Value number(std::uint64_t n) { return Value{n, {}, false}; }
Value text(std::string_view s) { return Value{0, s, true}; }

Definition with_filter(std::string_view command) {
    auto result = parse_definition(command);
    if (!result) {
        ADD_FAILURE() << format_error(result.error());
        return Definition{};
    }
    if (!result->filter) {
        ADD_FAILURE() << "no filter in " << command;
    }
    return std::move(*result);
}

bool matches(const Definition& definition, std::vector<Value> values) {
    return definition.filter && definition.filter->matches(values);
}

TEST(DefinitionFilter, NumericComparisonsUnsigned) {
    const auto d = with_filter("p f a=%di if a > 10");
    EXPECT_TRUE(matches(d, {number(11)}));
    EXPECT_FALSE(matches(d, {number(10)}));
    EXPECT_TRUE(matches(d, {number(~std::uint64_t{0})}));  // unsigned: huge, not -1
    const auto ops = with_filter("p f a=%di if a == 1 || a != 5 && a <= 7 && a >= 6 || a < 0x3 && a & 2");
    EXPECT_TRUE(matches(ops, {number(1)}));
    EXPECT_TRUE(matches(ops, {number(6)}));
    EXPECT_TRUE(matches(ops, {number(7)}));
    EXPECT_FALSE(matches(ops, {number(5)}));
    EXPECT_TRUE(matches(ops, {number(2)}));
    EXPECT_FALSE(matches(ops, {number(0)}));
    EXPECT_FALSE(matches(ops, {number(8)}));
}

TEST(DefinitionFilter, SignedFieldsCompareSigned) {
    const auto d = with_filter("p f a=%di:s32 if a < -1");
    EXPECT_TRUE(matches(d, {number(static_cast<std::uint64_t>(-2))}));
    EXPECT_FALSE(matches(d, {number(static_cast<std::uint64_t>(-1))}));
    EXPECT_FALSE(matches(d, {number(5)}));
}

TEST(DefinitionFilter, ConstantsAreCutToTheFieldWidth) {
    // The kernel casts the constant to the field's type: 0x101 as a u8 is 1.
    const auto d = with_filter("p f a=+0(%di):u8 if a == 0x101");
    EXPECT_TRUE(matches(d, {number(1)}));
    // A signed byte: 0xff is -1, and the hit path hands -1 sign-extended.
    const auto s = with_filter("p f a=+0(%di):s8 if a == 0xff");
    EXPECT_TRUE(matches(s, {number(~std::uint64_t{0})}));
}

TEST(DefinitionFilter, AndBindsTighterThanOr) {
    const auto d = with_filter("p f a=%di b=%si if a == 1 || a == 2 && b == 3");
    EXPECT_TRUE(matches(d, {number(1), number(0)}));
    EXPECT_FALSE(matches(d, {number(2), number(0)}));
    EXPECT_TRUE(matches(d, {number(2), number(3)}));
}

TEST(DefinitionFilter, ParenthesesAndNot) {
    const auto d = with_filter("p f a=%di b=%si if !(a == 1 || b == 1) && !b == 2");
    EXPECT_TRUE(matches(d, {number(0), number(0)}));
    EXPECT_FALSE(matches(d, {number(1), number(0)}));
    EXPECT_FALSE(matches(d, {number(0), number(1)}));
    EXPECT_FALSE(matches(d, {number(0), number(2)}));
    const auto twice = with_filter("p f a=%di if !!a == 1");
    EXPECT_TRUE(matches(twice, {number(1)}));
    EXPECT_FALSE(matches(twice, {number(2)}));
}

TEST(DefinitionFilter, DeMorganAgreesOnEveryInput) {
    const auto left = with_filter("p f a=%di b=%si c=%dx if !(a == 1 && (b == 1 || !(c == 1)))");
    const auto right = with_filter("p f a=%di b=%si c=%dx if a != 1 || b != 1 && c == 1");
    for (int bits = 0; bits < 8; ++bits) {
        const std::vector<Value> values{number(bits & 1), number((bits >> 1) & 1), number((bits >> 2) & 1)};
        EXPECT_EQ(matches(left, values), matches(right, values)) << bits;
    }
}

TEST(DefinitionFilter, StringsEqualAndGlob) {
    const auto d = with_filter("p f c=$comm if c == \"bash\" || c ~ \"py*[0-9]\"");
    EXPECT_TRUE(matches(d, {text("bash")}));
    EXPECT_FALSE(matches(d, {text("bas")}));
    EXPECT_TRUE(matches(d, {text("python3")}));
    EXPECT_FALSE(matches(d, {text("python")}));
    const auto not_equal = with_filter("p f c=$comm if c != 'sh'");
    EXPECT_TRUE(matches(not_equal, {text("bash")}));
    EXPECT_FALSE(matches(not_equal, {text("sh")}));
}

TEST(DefinitionFilter, GlobForms) {
    const auto d = with_filter("p f s=+0(%di):string if s ~ \"lib?[!x-z].so\"");
    EXPECT_TRUE(matches(d, {text("libcc.so")}));
    EXPECT_FALSE(matches(d, {text("libcx.so")}));
    EXPECT_FALSE(matches(d, {text("libc.so")}));
    const auto stars = with_filter("p f s=+0(%di):string if s ~ \"*/lib*.so\"");
    EXPECT_TRUE(matches(stars, {text("/usr/lib/libc.so")}));
    EXPECT_FALSE(matches(stars, {text("/usr/lib/libc.so.6")}));
    const auto negated = with_filter("p f s=+0(%di):string if s ~ \"!*.so\"");
    EXPECT_FALSE(matches(negated, {text("a.so")}));
    EXPECT_TRUE(matches(negated, {text("a.out")}));
    const auto literal_bracket = with_filter("p f s=+0(%di):string if s ~ \"a[b\"");
    EXPECT_TRUE(matches(literal_bracket, {text("a[b")}));
    const auto star_only = with_filter("p f s=+0(%di):string if s ~ \"*\"");
    EXPECT_TRUE(matches(star_only, {text("")}));
}

TEST(DefinitionFilter, CharArraysAreStrings) {
    const auto d = with_filter("p f m=+0(%di):char[4] if m == \"GET\"");
    EXPECT_TRUE(matches(d, {text("GET")}));
}

TEST(DefinitionFilter, MissingOrMismatchedFieldsFailTheirPredicate) {
    const auto d = with_filter("p f a=%di s=+0(%di):string if a == 1 || s == \"x\"");
    EXPECT_FALSE(matches(d, {}));
    EXPECT_FALSE(matches(d, {text("1"), number(0)}));
    EXPECT_TRUE(matches(d, {number(0), text("x")}));
}

TEST(DefinitionFilter, FieldsUsedAreSortedAndUnique) {
    const auto d = with_filter("p f a=%di b=%si c=%dx if c == 1 || a == 2 || c == 3");
    EXPECT_EQ(d.filter->fields_used(), (std::vector<unsigned>{0, 2}));
}

TEST(DefinitionFilter, DefaultFilterMatchesEverything) {
    const Filter filter;
    EXPECT_TRUE(filter.matches({}));
    EXPECT_TRUE(filter.fields_used().empty());
}

TEST(DefinitionFilter, IfInsideAStringImmediateIsText) {
    auto result = parse_definition("p f s=\\\"a if b\" %ax");
    ASSERT_TRUE(result.has_value()) << format_error(result.error());
    EXPECT_FALSE(result->filter.has_value());
    ASSERT_EQ(result->args.size(), 2u);
    EXPECT_EQ(result->args[0].string_value, "a if b");
}

TEST(DefinitionFilter, ErrorPositionsPointIntoTheCommand) {
    const auto result = parse_definition("p f a=%di  if   a == 1 && zz == 2");
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().message, "Field not found");
    EXPECT_EQ(result.error().position, 26u);
}

TEST(DefinitionFilter, LongChainsRunWithoutRecursion) {
    std::string command = "p f a=%di if a == 0";
    for (int i = 1; i < 256; ++i) {
        command += " || a == " + std::to_string(i);
    }
    const auto d = with_filter(command);
    EXPECT_TRUE(matches(d, {number(255)}));
    EXPECT_FALSE(matches(d, {number(256)}));
    const auto refused = parse_definition(command + " || a == 256");
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().message, "Too many terms in predicate expression");
}

}  // namespace
}  // namespace ukp::tracer
