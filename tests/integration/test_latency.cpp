// The latency helper: a LatencyProbe on a function records each call's
// duration into its log2 histogram.  The timed functions are plain C++,
// noinline with volatile locals so each stays a call of its own.
#include <gtest/gtest.h>
#include <time.h>

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "ukprobes/latency.hpp"

extern "C" {
[[gnu::noinline]] long latency_sleep_one_ms(long value) {
    timespec duration{.tv_sec = 0, .tv_nsec = 1'000'000};
    while (nanosleep(&duration, &duration) != 0) {}
    volatile long result = value;
    return result + 1;
}

[[gnu::noinline]] long latency_fast(long value) {
    volatile long result = value;
    return result + 1;
}
}

namespace {

constexpr std::uint64_t one_ms_ns = 1'000'000;

TEST(LatencyHistogram, BucketsArePowersOfTwoWithZeroAndOneTogether) {
    using ukp::LatencyHistogram;
    EXPECT_EQ(LatencyHistogram::bucket_of(0), 0u);
    EXPECT_EQ(LatencyHistogram::bucket_of(1), 0u);
    EXPECT_EQ(LatencyHistogram::bucket_of(2), 1u);
    EXPECT_EQ(LatencyHistogram::bucket_of(3), 1u);
    EXPECT_EQ(LatencyHistogram::bucket_of(1023), 9u);
    EXPECT_EQ(LatencyHistogram::bucket_of(1024), 10u);
    EXPECT_EQ(LatencyHistogram::bucket_of(UINT64_MAX), 63u);
    EXPECT_EQ(LatencyHistogram::bucket_label(0), "[0, 2)");
    EXPECT_EQ(LatencyHistogram::bucket_label(9), "[512, 1K)");
    EXPECT_EQ(LatencyHistogram::bucket_label(10), "[1K, 2K)");
    EXPECT_EQ(LatencyHistogram::bucket_label(20), "[1M, 2M)");
    EXPECT_EQ(LatencyHistogram::bucket_label(63), "[8E, 16E)");
}

TEST(LatencyHistogram, PercentileIsTheBucketUpperBoundCappedAtTheMaximum) {
    ukp::LatencyHistogram histogram;
    histogram.buckets[10] = 90;  // [1K, 2K)
    histogram.buckets[12] = 10;  // [4K, 8K)
    histogram.count = 100;
    histogram.max_ns = 5000;
    EXPECT_EQ(histogram.percentile(0.5), 2048u);
    EXPECT_EQ(histogram.percentile(0.9), 2048u);
    EXPECT_EQ(histogram.percentile(0.91), 5000u);  // 8192, capped at max_ns
    EXPECT_EQ(ukp::LatencyHistogram{}.percentile(0.5), 0u);
}

TEST(Latency, SleepingFunctionLandsInTheMillisecondBuckets) {
    ukp::LatencyProbe latency{&latency_sleep_one_ms};
    ASSERT_TRUE(latency.register_probe());
    for (long i = 0; i < 20; ++i) ASSERT_EQ(latency_sleep_one_ms(i), i + 1);
    const auto histogram = latency.snapshot();
    ASSERT_TRUE(latency.unregister_probe());

    EXPECT_EQ(histogram.count, 20u);
    EXPECT_GE(histogram.min_ns, one_ms_ns);
    EXPECT_GE(histogram.max_ns, histogram.min_ns);
    EXPECT_GE(histogram.sum_ns, 20 * one_ms_ns);
    EXPECT_GE(histogram.mean(), static_cast<double>(one_ms_ns));
    // 1 ms = 0xf4240 ns is in [512K, 1M); nanosleep's slack puts most calls
    // in [1M, 2M).  Allow one bucket more for a loaded machine.
    const auto median = histogram.percentile(0.5);
    EXPECT_GE(median, one_ms_ns);
    EXPECT_LE(median, std::uint64_t{1} << 22);
    const std::string text = histogram.format_histogram();
    EXPECT_NE(text.find(ukp::LatencyHistogram::bucket_label(ukp::LatencyHistogram::bucket_of(histogram.min_ns))),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("|@"), std::string::npos) << text;
}

TEST(Latency, CountsEveryCallFromTwoThreads) {
    constexpr int calls_per_thread = 1000;
    ukp::LatencyProbe latency{&latency_fast};
    ASSERT_TRUE(latency.register_probe());
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t)
        threads.emplace_back([] {
            for (long i = 0; i < calls_per_thread; ++i)
                if (latency_fast(i) != i + 1) std::abort();
        });
    for (auto& thread : threads) thread.join();
    const auto histogram = latency.snapshot();
    EXPECT_EQ(histogram.count, 2u * calls_per_thread);
    std::uint64_t in_buckets = 0;
    for (auto bucket : histogram.buckets) in_buckets += bucket;
    EXPECT_EQ(in_buckets, 2u * calls_per_thread);
    EXPECT_LE(histogram.min_ns, histogram.max_ns);
    EXPECT_EQ(latency.kretprobe().nmissed(), 0u);
}

TEST(Latency, UnregisteredProbeCountsNoMore) {
    ukp::LatencyProbe latency{&latency_fast};
    ASSERT_TRUE(latency.register_probe());
    for (long i = 0; i < 10; ++i) latency_fast(i);
    ASSERT_TRUE(latency.unregister_probe());
    for (long i = 0; i < 10; ++i) latency_fast(i);
    EXPECT_EQ(latency.snapshot().count, 10u);
    auto again = latency.unregister_probe();
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ukp::Errc::NotRegistered);
}

TEST(Latency, ProbeBySymbolName) {
    ukp::LatencyProbe latency{std::string("latency_fast")};
    ASSERT_TRUE(latency.register_probe()) << "symbol lookup failed";
    for (long i = 0; i < 5; ++i) latency_fast(i);
    EXPECT_EQ(latency.snapshot().count, 5u);
}

}  // namespace
