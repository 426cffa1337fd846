// Log2 histograms and their bpftrace-style rendering (output.hpp shows an
// example).  Facts from bpftrace's text output that we follow:
// - one line per bucket from the first to the last non-empty one, empty
//   buckets in between included;
// - "[0]" and "[1]" for the single-value buckets, "[LO, HI)" above, where a
//   bound 2^p prints as 2^(p mod 10) followed by K, M, G, T, P or E for
//   p / 10 = 1..6 ("[1K, 2K)", "[8E, 16E)");
// - label left-aligned in 16 columns, count right-aligned in 8, " |", a
//   bar of '@' scaled so the fullest bucket fills 52 columns, "|".
#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "tracer/output.hpp"

namespace ukp::tracer {

namespace {

constexpr std::size_t label_width = 16;
constexpr std::size_t count_width = 8;
constexpr std::size_t bar_width = 52;
constexpr unsigned power_of_1024_step = 10;

// 2^power as bpftrace labels it: 1, 2, ..., 512, 1K, ..., 512K, 1M, ..., 16E.
std::string power_of_two_label(unsigned power) {
    constexpr std::array<std::string_view, 7> suffixes = {"", "K", "M", "G", "T", "P", "E"};
    const unsigned step = power / power_of_1024_step;
    return fmt::format("{}{}", std::uint64_t{1} << (power % power_of_1024_step), suffixes.at(step));
}

}  // namespace

Log2Histogram Log2Histogram::from_buckets(std::span<const std::uint64_t, bucket_count> buckets) {
    Log2Histogram histogram;
    std::copy(buckets.begin(), buckets.end(), histogram.buckets_.begin());
    for (unsigned bucket = 0; bucket < bucket_count; ++bucket) {
        const std::uint64_t count = buckets[bucket];
        if (count == 0) {
            continue;
        }
        if (histogram.count_ == 0) {
            histogram.min_ = bucket_lowest(bucket);
        }
        histogram.max_ = bucket_highest(bucket);
        histogram.count_ += count;
        // A lower bound: a midpoint would pretend to know the values.
        histogram.sum_ += static_cast<unsigned __int128>(bucket_lowest(bucket)) * count;
    }
    histogram.exact_totals_ = false;
    return histogram;
}

Log2Histogram Log2Histogram::from_buckets(std::span<const std::uint64_t, bucket_count> buckets,
                                          unsigned __int128 sum, std::uint64_t min, std::uint64_t max) {
    Log2Histogram histogram = from_buckets(buckets);
    histogram.exact_totals_ = true;
    if (histogram.count_ != 0) {
        histogram.sum_ = sum;
        histogram.min_ = min;
        histogram.max_ = max;
    } else {
        histogram.sum_ = 0;
    }
    return histogram;
}

void Log2Histogram::add(std::uint64_t value) {
    ++buckets_[bucket_of(value)];
    if (count_ == 0 || value < min_) {
        min_ = value;
    }
    if (count_ == 0 || value > max_) {
        max_ = value;
    }
    ++count_;
    sum_ += value;
}

void Log2Histogram::merge(const Log2Histogram& other) {
    if (other.count_ == 0) {
        return;
    }
    for (std::size_t bucket = 0; bucket < bucket_count; ++bucket) {
        buckets_[bucket] += other.buckets_[bucket];
    }
    min_ = count_ == 0 ? other.min_ : std::min(min_, other.min_);
    max_ = count_ == 0 ? other.max_ : std::max(max_, other.max_);
    exact_totals_ = (count_ == 0 || exact_totals_) && other.exact_totals_;
    count_ += other.count_;
    sum_ += other.sum_;
}

std::uint64_t Log2Histogram::average() const {
    return count_ == 0 ? 0 : static_cast<std::uint64_t>(sum_ / count_);
}

std::string histogram_bucket_label(unsigned bucket) {
    if (bucket <= 1) {
        return fmt::format("[{}]", bucket);
    }
    return fmt::format("[{}, {})", power_of_two_label(bucket - 1), power_of_two_label(bucket));
}

std::string format_histogram(std::string_view title, const Log2Histogram& histogram,
                             const HistogramPrintOptions& options) {
    std::string out;
    auto sink = std::back_inserter(out);
    if (!title.empty()) {
        fmt::format_to(sink, "{}:\n", title);
    }
    const auto& buckets = histogram.buckets();
    const auto first = std::find_if(buckets.begin(), buckets.end(), [](std::uint64_t n) { return n != 0; });
    if (first != buckets.end()) {
        const auto last = std::find_if(buckets.rbegin(), buckets.rend(), [](std::uint64_t n) { return n != 0; });
        const std::uint64_t fullest = *std::max_element(buckets.begin(), buckets.end());
        for (auto bucket = first; bucket != last.base(); ++bucket) {
            const auto index = static_cast<unsigned>(bucket - buckets.begin());
            // 128 bits: count * 52 overflows u64 above 2^58 hits.
            const auto bar = static_cast<std::size_t>(static_cast<unsigned __int128>(*bucket) * bar_width / fullest);
            fmt::format_to(sink, "{:<{}}{:>{}} |{:<{}}|\n", histogram_bucket_label(index), label_width, *bucket,
                           count_width, std::string(bar, '@'), bar_width);
        }
    }
    if (!options.summary) {
        return out;
    }
    if (histogram.empty()) {
        out += "count 0\n";
    } else if (histogram.has_exact_totals()) {
        fmt::format_to(sink, "count {}, min {}{}, avg {}{}, max {}{}\n", histogram.count(), histogram.min(),
                       options.unit, histogram.average(), options.unit, histogram.max(), options.unit);
    } else {
        fmt::format_to(sink, "count {}, min >= {}{}, max <= {}{}\n", histogram.count(), histogram.min(),
                       options.unit, histogram.max(), options.unit);
    }
    return out;
}

}  // namespace ukp::tracer
