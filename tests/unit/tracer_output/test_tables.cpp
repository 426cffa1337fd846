// kprobe_profile rows (byte-compatible with the kernel's by default) and
// the `--count` map printer.
#include <gtest/gtest.h>

#include <vector>

#include "tracer/output.hpp"

namespace ukp::tracer {
namespace {

TEST(ProfileTable, MatchesKernelKprobeProfileByDefault) {
    const std::vector<ProfileRow> rows = {{"myprobe", 1234, 5, 9, 9}, {"r_malloc", 0, 0, 0, 0}};
    // "  %-44s %15lu %15lu\n"
    EXPECT_EQ(format_profile(rows),
              "  myprobe                                                 1234               5\n"
              "  r_malloc                                                   0               0\n");
}

TEST(ProfileTable, OptionalColumnsAndHeaderAlign) {
    const std::vector<ProfileRow> rows = {{"p", UINT64_MAX, 1, 2, 3}};
    EXPECT_EQ(format_profile(rows, {.header = true, .show_lost = true, .show_faults = true}),
              "  EVENT                                                   HITS          MISSES            LOST"
              "          FAULTS\n"
              "  p                                            18446744073709551615               1               2"
              "               3\n");
    EXPECT_EQ(format_profile(rows, {.header = false, .show_lost = false, .show_faults = true}),
              "  p                                            18446744073709551615               1               3\n");
}

TEST(ProfileTable, LongNamesWidenTheColumnForEveryRow) {
    const std::string long_name(50, 'x');
    const std::vector<ProfileRow> rows = {{long_name, 1, 0, 0, 0}, {"short", 22, 0, 0, 0}};
    const std::string text = format_profile(rows);
    const auto first_end = text.find('\n');
    EXPECT_EQ(first_end, text.size() - first_end - 2);  // both lines equally long (each + '\n')
    EXPECT_EQ(text.substr(0, first_end), "  " + long_name + "               1               0");
}

TEST(ProfileTable, NoRowsNoOutput) { EXPECT_EQ(format_profile({}), ""); }

TEST(Counts, LargestFirstTiesByKey) {
    const std::vector<CountEntry> entries = {{"free", 10}, {"malloc", 42}, {"calloc", 10}, {"realloc", 0}};
    EXPECT_EQ(format_counts("@count", entries),
              "@count[malloc]: 42\n"
              "@count[calloc]: 10\n"
              "@count[free]: 10\n"
              "@count[realloc]: 0\n");
}

TEST(Counts, EmptyKeyPrintsTheBareMapName) {
    const std::vector<CountEntry> entries = {{"", UINT64_MAX}};
    EXPECT_EQ(format_counts("@total", entries), "@total: 18446744073709551615\n");
}

}  // namespace
}  // namespace ukp::tracer
