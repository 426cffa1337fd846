// Runs every line of golden.txt (its format is described at its top): the
// kernel selftests' definitions and ours, accepted and refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tracer/definition.hpp"

namespace ukp::tracer {
namespace {

struct GoldenCase {
    int line = 0;
    bool accepted = false;
    std::string expectation;  // the event name, or the error message
    std::string definition;
    std::size_t caret = 0;    // refused: where the caret goes
};

std::filesystem::path golden_path() { return std::filesystem::path(__FILE__).parent_path() / "golden.txt"; }

std::vector<GoldenCase> load_cases() {
    std::vector<GoldenCase> cases;
    std::ifstream file(golden_path());
    std::string text;
    for (int line = 1; std::getline(file, text); ++line) {
        if (text.empty() || text[0] == '#') {
            continue;
        }
        GoldenCase golden;
        golden.line = line;
        const auto bar = text.find(" | ");
        const auto space = text.find(' ');
        if (bar == std::string::npos || space == std::string::npos || space > bar) {
            golden.expectation = "malformed golden line";
            cases.push_back(golden);
            continue;
        }
        const std::string kind = text.substr(0, space);
        golden.accepted = kind == "ok";
        golden.expectation = text.substr(space + 1, bar - space - 1);
        golden.definition = text.substr(bar + 3);
        if (!golden.accepted) {
            const auto mark = golden.definition.find('^');
            golden.caret = mark;
            if (mark != std::string::npos) {
                golden.definition.erase(mark, 1);
            }
        }
        if (kind != "ok" && kind != "error") {
            golden.expectation = "malformed golden line";
        }
        cases.push_back(golden);
    }
    return cases;
}

// gtest prints a failing parameter; show the line, not its bytes.
void PrintTo(const GoldenCase& golden, std::ostream* out) {
    *out << "golden.txt:" << golden.line << " " << golden.definition;
}

class DefinitionGolden : public testing::TestWithParam<GoldenCase> {};

TEST_P(DefinitionGolden, ParsesAsListed) {
    const GoldenCase& golden = GetParam();
    ASSERT_NE(golden.expectation, "malformed golden line") << "golden.txt:" << golden.line;
    const auto result = parse_definition(golden.definition);
    if (golden.accepted) {
        ASSERT_TRUE(result.has_value()) << "golden.txt:" << golden.line << " refused:\n"
                                        << format_error(result.error());
        const std::string event = result->type == ProbeType::Remove || !result->event.empty() ? result->event : "-";
        EXPECT_EQ(event, golden.expectation) << "golden.txt:" << golden.line << ": " << golden.definition;
    } else {
        ASSERT_NE(golden.caret, std::string::npos) << "golden.txt:" << golden.line << ": no '^' in an error line";
        ASSERT_FALSE(result.has_value()) << "golden.txt:" << golden.line << " accepted: " << golden.definition;
        EXPECT_EQ(result.error().message, golden.expectation) << "golden.txt:" << golden.line;
        EXPECT_EQ(result.error().position, golden.caret)
            << "golden.txt:" << golden.line << "\n" << format_error(result.error());
        EXPECT_EQ(result.error().command, golden.definition);
    }
}

INSTANTIATE_TEST_SUITE_P(Lines, DefinitionGolden, testing::ValuesIn(load_cases()),
                         [](const testing::TestParamInfo<GoldenCase>& info) {
                             return "line" + std::to_string(info.param.line);
                         });

TEST(DefinitionGoldenFile, IsFoundAndHoldsBothKinds) {
    const auto cases = load_cases();
    std::size_t accepted = 0;
    for (const auto& golden : cases) {
        accepted += golden.accepted ? 1 : 0;
    }
    EXPECT_GT(accepted, 40u) << golden_path();
    EXPECT_GT(cases.size() - accepted, 100u) << golden_path();
}

}  // namespace
}  // namespace ukp::tracer
