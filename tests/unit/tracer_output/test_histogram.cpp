// Log2Histogram: bucket math at the edges (0, 1, 2, 3, 4, 2^63, UINT64_MAX),
// totals that must not overflow, merging, the agent's bucket array, and the
// bpftrace-style rendering as goldens.
#include <gtest/gtest.h>

#include "tracer/output.hpp"

namespace ukp::tracer {
namespace {

using Histogram = Log2Histogram;

static_assert(Histogram::bucket_of(0) == 0);
static_assert(Histogram::bucket_of(1) == 1);
static_assert(Histogram::bucket_of(UINT64_MAX) == 64);
static_assert(Histogram::bucket_count == 65);

TEST(Log2Histogram, BucketOfAtPowerOfTwoEdges) {
    EXPECT_EQ(Histogram::bucket_of(0), 0u);
    EXPECT_EQ(Histogram::bucket_of(1), 1u);
    EXPECT_EQ(Histogram::bucket_of(2), 2u);
    EXPECT_EQ(Histogram::bucket_of(3), 2u);
    EXPECT_EQ(Histogram::bucket_of(4), 3u);
    EXPECT_EQ(Histogram::bucket_of(7), 3u);
    EXPECT_EQ(Histogram::bucket_of(1023), 10u);
    EXPECT_EQ(Histogram::bucket_of(1024), 11u);
    EXPECT_EQ(Histogram::bucket_of((std::uint64_t{1} << 63) - 1), 63u);
    EXPECT_EQ(Histogram::bucket_of(std::uint64_t{1} << 63), 64u);
    EXPECT_EQ(Histogram::bucket_of(UINT64_MAX), 64u);
}

TEST(Log2Histogram, BucketBoundsContainTheirValues) {
    EXPECT_EQ(Histogram::bucket_lowest(0), 0u);
    EXPECT_EQ(Histogram::bucket_highest(0), 0u);
    EXPECT_EQ(Histogram::bucket_lowest(1), 1u);
    EXPECT_EQ(Histogram::bucket_highest(1), 1u);
    EXPECT_EQ(Histogram::bucket_lowest(2), 2u);
    EXPECT_EQ(Histogram::bucket_highest(2), 3u);
    EXPECT_EQ(Histogram::bucket_lowest(64), std::uint64_t{1} << 63);
    EXPECT_EQ(Histogram::bucket_highest(64), UINT64_MAX);
    for (unsigned bucket = 0; bucket < Histogram::bucket_count; ++bucket) {
        EXPECT_EQ(Histogram::bucket_of(Histogram::bucket_lowest(bucket)), bucket);
        EXPECT_EQ(Histogram::bucket_of(Histogram::bucket_highest(bucket)), bucket);
        if (bucket > 0) {
            EXPECT_EQ(Histogram::bucket_lowest(bucket), Histogram::bucket_highest(bucket - 1) + 1);
        }
    }
}

TEST(Log2Histogram, LabelsFollowBpftrace) {
    EXPECT_EQ(histogram_bucket_label(0), "[0]");
    EXPECT_EQ(histogram_bucket_label(1), "[1]");
    EXPECT_EQ(histogram_bucket_label(2), "[2, 4)");
    EXPECT_EQ(histogram_bucket_label(10), "[512, 1K)");
    EXPECT_EQ(histogram_bucket_label(11), "[1K, 2K)");
    EXPECT_EQ(histogram_bucket_label(20), "[512K, 1M)");
    EXPECT_EQ(histogram_bucket_label(31), "[1G, 2G)");
    EXPECT_EQ(histogram_bucket_label(41), "[1T, 2T)");
    EXPECT_EQ(histogram_bucket_label(51), "[1P, 2P)");
    EXPECT_EQ(histogram_bucket_label(61), "[1E, 2E)");
    EXPECT_EQ(histogram_bucket_label(64), "[8E, 16E)");
}

TEST(Log2Histogram, AddKeepsCountSumMinMax) {
    Histogram histogram;
    EXPECT_TRUE(histogram.empty());
    EXPECT_EQ(histogram.average(), 0u);
    for (const std::uint64_t value : {5u, 0u, 3u, 4u}) {
        histogram.add(value);
    }
    EXPECT_EQ(histogram.count(), 4u);
    EXPECT_EQ(histogram.sum(), 12u);
    EXPECT_EQ(histogram.min(), 0u);
    EXPECT_EQ(histogram.max(), 5u);
    EXPECT_EQ(histogram.average(), 3u);
    EXPECT_EQ(histogram.buckets()[0], 1u);
    EXPECT_EQ(histogram.buckets()[2], 1u);
    EXPECT_EQ(histogram.buckets()[3], 2u);
}

TEST(Log2Histogram, SumOfHugeValuesDoesNotOverflow) {
    Histogram histogram;
    histogram.add(UINT64_MAX);
    histogram.add(UINT64_MAX);
    histogram.add(std::uint64_t{1} << 63);
    EXPECT_EQ(histogram.buckets()[64], 3u);
    EXPECT_EQ(histogram.sum(), static_cast<unsigned __int128>(UINT64_MAX) * 2 + (std::uint64_t{1} << 63));
    EXPECT_EQ(histogram.average(), static_cast<std::uint64_t>(histogram.sum() / 3));
    EXPECT_EQ(histogram.max(), UINT64_MAX);
    EXPECT_EQ(histogram.min(), std::uint64_t{1} << 63);
}

TEST(Log2Histogram, MergeAddsBucketsAndTotals) {
    Histogram left;
    Histogram right;
    left.add(10);
    left.add(20);
    right.add(1);
    right.add(1000);
    left.merge(right);
    EXPECT_EQ(left.count(), 4u);
    EXPECT_EQ(left.sum(), 1031u);
    EXPECT_EQ(left.min(), 1u);
    EXPECT_EQ(left.max(), 1000u);
    EXPECT_TRUE(left.has_exact_totals());

    Histogram empty;
    empty.merge(left);
    EXPECT_EQ(empty.min(), 1u);
    EXPECT_EQ(empty.buckets(), left.buckets());
    left.merge(Histogram{});
    EXPECT_EQ(left.count(), 4u);
}

TEST(Log2Histogram, FromBucketsWithoutTotalsBoundsMinAndMax) {
    Histogram::Buckets buckets{};
    buckets[2] = 3;   // [2, 4)
    buckets[11] = 1;  // [1K, 2K)
    const auto histogram = Histogram::from_buckets(buckets);
    EXPECT_FALSE(histogram.has_exact_totals());
    EXPECT_EQ(histogram.count(), 4u);
    EXPECT_EQ(histogram.min(), 2u);
    EXPECT_EQ(histogram.max(), 2047u);
    const std::string text = format_histogram("", histogram, {.unit = "ns"});
    EXPECT_NE(text.find("count 4, min >= 2ns, max <= 2047ns\n"), std::string::npos) << text;

    Histogram exact;
    exact.add(3);
    Histogram merged = exact;
    merged.merge(histogram);
    EXPECT_FALSE(merged.has_exact_totals());
}

TEST(Log2Histogram, FromBucketsWithTotalsIsExact) {
    Histogram::Buckets buckets{};
    buckets[0] = 1;
    buckets[3] = 2;
    const auto histogram = Histogram::from_buckets(buckets, 11, 0, 6);
    EXPECT_TRUE(histogram.has_exact_totals());
    EXPECT_EQ(histogram.count(), 3u);
    EXPECT_EQ(histogram.average(), 3u);
    EXPECT_EQ(histogram.max(), 6u);
}

TEST(Log2Histogram, PrintsLikeBpftraceHist) {
    Histogram histogram;
    for (int i = 0; i < 3; ++i) {
        histogram.add(0);
    }
    for (int i = 0; i < 6; ++i) {
        histogram.add(2 + static_cast<std::uint64_t>(i % 2));
    }
    histogram.add(1500);
    // Empty buckets between the first and last non-empty ones are shown.
    EXPECT_EQ(format_histogram("@latency_ns[malloc]", histogram, {.unit = "ns"}),
              "@latency_ns[malloc]:\n"
              "[0]                    3 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |\n"
              "[1]                    0 |                                                    |\n"
              "[2, 4)                 6 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
              "[4, 8)                 0 |                                                    |\n"
              "[8, 16)                0 |                                                    |\n"
              "[16, 32)               0 |                                                    |\n"
              "[32, 64)               0 |                                                    |\n"
              "[64, 128)              0 |                                                    |\n"
              "[128, 256)             0 |                                                    |\n"
              "[256, 512)             0 |                                                    |\n"
              "[512, 1K)              0 |                                                    |\n"
              "[1K, 2K)               1 |@@@@@@@@                                            |\n"
              "count 10, min 0ns, avg 151ns, max 1500ns\n");
}

TEST(Log2Histogram, PrintsOnlyTheNonEmptyRange) {
    Histogram histogram;
    histogram.add(1024);
    histogram.add(2047);
    EXPECT_EQ(format_histogram("@h", histogram, {.unit = "", .summary = false}),
              "@h:\n"
              "[1K, 2K)               2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n");
}

TEST(Log2Histogram, TopBucketAndWideCounts) {
    Histogram::Buckets buckets{};
    buckets[64] = 123456789012;  // wider than the 8-column count field
    const auto histogram = Histogram::from_buckets(buckets);
    EXPECT_EQ(format_histogram("", histogram, {.unit = "", .summary = false}),
              "[8E, 16E)       123456789012 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n");
}

TEST(Log2Histogram, BarOfHugeCountsDoesNotOverflow) {
    Histogram::Buckets buckets{};
    buckets[1] = UINT64_MAX;
    buckets[2] = UINT64_MAX / 2;
    const std::string text = format_histogram("", Histogram::from_buckets(buckets), {.unit = "", .summary = false});
    EXPECT_NE(text.find("[2, 4)          9223372036854775807 |" + std::string(25, '@') + std::string(27, ' ') + "|"),
              std::string::npos)
        << text;
}

TEST(Log2Histogram, EmptyPrintsTitleAndZeroCount) {
    EXPECT_EQ(format_histogram("@empty", Histogram{}), "@empty:\ncount 0\n");
}

}  // namespace
}  // namespace ukp::tracer
