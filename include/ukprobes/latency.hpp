// ukprobes: per-call latency of a function, as a log2 histogram.
//
//   extern "C" int compress(const char* data, unsigned long size);
//   ukp::LatencyProbe latency{&compress};          // or {"libz.so.1:deflate"}
//   if (auto registered = latency.register_probe(); !registered) ...
//   ...
//   auto histogram = latency.snapshot();
//   std::printf("%lu calls, p99 <= %lu ns\n%s", histogram.count, histogram.percentile(0.99),
//               histogram.format_histogram().c_str());
//
// A LatencyProbe owns a ukp::Kretprobe on the function.  Its entry handler
// stores the time in the call's instance data; its return handler adds
// (now - then) to the histogram.  So what is measured is the time from the
// function's first instruction to its `ret`, plus the share of the probe's
// own cost that falls between the two clock reads (a few tens of ns on the
// optimized path, microseconds on the int3 path).
//
// The facts this file relies on:
//
// 1. Both handlers run in a SIGTRAP handler (int3 path) or in the entry or
//    return trampoline, on the thread that called the function, possibly
//    while that thread holds malloc's or any other lock.  So they allocate
//    nothing and take no lock: every counter is a std::atomic<uint64_t>,
//    lock-free on x86-64, updated with relaxed ordering (each counter is
//    exact on its own; nothing orders one against another).
// 2. clock_gettime(CLOCK_MONOTONIC) is async-signal-safe (POSIX) and is
//    served by the vDSO without a system call.  rdtsc would be cheaper but
//    needs a calibration to nanoseconds and is not comparable across cores
//    on every machine; revisit if the clock read dominates.
// 3. Instance data is private to one call and 16-byte aligned (Kretprobe),
//    so the entry time needs no synchronization.
// 4. Calls that leave without returning (longjmp, a C++ exception,
//    pthread_exit) run no return handler: they are not recorded (the
//    Kretprobe's nabandoned() counts them).  Calls beyond maxactive nested
//    ones per thread are not recorded either (nmissed()).  If the probed
//    function is clock_gettime itself, or anything the handlers call, the
//    probe's hits from inside the handlers are missed, as for any probe.
//
// Buckets: bucket k holds durations in [2^k, 2^(k+1)) ns for k >= 1, and
// bucket 0 holds [0, 2) ns; 64 buckets cover every uint64_t.
#pragma once

#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>

#include "ukprobes/error.hpp"
#include "ukprobes/ukprobes.hpp"

namespace ukp {

// A copy of a LatencyProbe's counters.  Taken while calls run, it is not one
// instant: `count` and the sum of `buckets` may differ by the calls that
// were being recorded.
struct LatencyHistogram {
    static constexpr std::size_t bucket_count = 64;

    std::uint64_t count = 0;
    std::uint64_t sum_ns = 0;
    std::uint64_t min_ns = 0;  // 0 when count is 0
    std::uint64_t max_ns = 0;
    std::array<std::uint64_t, bucket_count> buckets{};

    // The bucket that `duration_ns` falls in: floor(log2), with 0 and 1 in 0.
    [[nodiscard]] static constexpr std::size_t bucket_of(std::uint64_t duration_ns) noexcept {
        return duration_ns < 2 ? 0 : static_cast<std::size_t>(std::bit_width(duration_ns) - 1);
    }
    [[nodiscard]] static constexpr std::uint64_t bucket_lower_bound(std::size_t bucket) noexcept {
        return bucket == 0 ? 0 : std::uint64_t{1} << bucket;
    }
    // Exclusive; the last bucket's true bound, 2^64, does not fit: it says
    // UINT64_MAX.
    [[nodiscard]] static constexpr std::uint64_t bucket_upper_bound(std::size_t bucket) noexcept {
        return bucket + 1 >= bucket_count ? std::numeric_limits<std::uint64_t>::max() : std::uint64_t{2} << bucket;
    }

    // A power of two with bpftrace's binary suffixes: 1, 512, 1K, 2M, 16E.
    [[nodiscard]] static std::string power_of_two_label(std::size_t exponent) {
        static constexpr const char* suffixes[] = {"", "K", "M", "G", "T", "P", "E"};
        const std::size_t thousands = std::min<std::size_t>(exponent / 10, std::size(suffixes) - 1);
        const std::uint64_t mantissa = std::uint64_t{1} << (exponent - thousands * 10);
        return std::to_string(mantissa) + suffixes[thousands];
    }
    // "[1K, 2K)", and "[0, 2)" for bucket 0, as format_histogram prints them.
    [[nodiscard]] static std::string bucket_label(std::size_t bucket) {
        return "[" + (bucket == 0 ? std::string("0") : power_of_two_label(bucket)) + ", " +
               power_of_two_label(bucket + 1) + ")";
    }

    [[nodiscard]] double mean() const noexcept {
        return count == 0 ? 0.0 : static_cast<double>(sum_ns) / static_cast<double>(count);
    }

    // An upper estimate of the `fraction` quantile (0.5: median, 0.99: p99):
    // the upper bound of the bucket that holds it, but never more than
    // max_ns.  0 when nothing was recorded.
    [[nodiscard]] std::uint64_t percentile(double fraction) const noexcept {
        std::uint64_t total = 0;
        for (auto bucket : buckets) total += bucket;
        if (total == 0) return 0;
        fraction = std::clamp(fraction, 0.0, 1.0);
        // The rank of the wanted duration, 1-based: ceil(fraction * total), at least 1.
        auto rank = static_cast<std::uint64_t>(fraction * static_cast<double>(total));
        if (static_cast<double>(rank) < fraction * static_cast<double>(total)) ++rank;
        rank = std::clamp<std::uint64_t>(rank, 1, total);
        std::uint64_t seen = 0;
        for (std::size_t bucket = 0; bucket < bucket_count; ++bucket) {
            seen += buckets[bucket];
            if (seen >= rank) return std::min(bucket_upper_bound(bucket), std::max(max_ns, bucket_lower_bound(bucket)));
        }
        return max_ns;
    }

    // Text bars like bpftrace's hist(), from the first non-empty bucket to
    // the last, the longest bar `width` characters:
    //   [1M, 2M)              20 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
    // Durations in ns.  Empty when nothing was recorded.
    [[nodiscard]] std::string format_histogram(std::size_t width = 50) const {
        std::size_t first = bucket_count, last = 0;
        std::uint64_t largest = 0;
        for (std::size_t bucket = 0; bucket < bucket_count; ++bucket) {
            if (buckets[bucket] == 0) continue;
            first = std::min(first, bucket);
            last = bucket;
            largest = std::max(largest, buckets[bucket]);
        }
        std::string text;
        if (largest == 0) return text;
        for (std::size_t bucket = first; bucket <= last; ++bucket) {
            char head[64];
            std::snprintf(head, sizeof head, "%-18s %8llu |", bucket_label(bucket).c_str(),
                          static_cast<unsigned long long>(buckets[bucket]));
            std::string line = head;
            // Scaled so the largest bucket fills the width; rounded down, like bpftrace.
            const auto bar = static_cast<std::size_t>(buckets[bucket] * width / largest);
            line += std::string(bar, '@') + std::string(width - bar, ' ') + "|\n";
            text += line;
        }
        return text;
    }
};

class LatencyProbe {
public:
    // Time calls of `function` (its first instruction is probed).
    template <class R, class... Args>
    explicit LatencyProbe(R (*function)(Args...)) : LatencyProbe(reinterpret_cast<void*>(function)) {}
    template <class R, class... Args>
    explicit LatencyProbe(R (*function)(Args...) noexcept) : LatencyProbe(reinterpret_cast<void*>(function)) {}
    explicit LatencyProbe(void* function_address) : probe_(make_kretprobe()) { probe_.kp.addr = function_address; }
    // Time calls of the function named "name" or "module:name".
    explicit LatencyProbe(std::string symbol_name) : probe_(make_kretprobe()) {
        probe_.kp.symbol_name = std::move(symbol_name);
    }

    // The handlers point at this object: it cannot move.
    LatencyProbe(const LatencyProbe&) = delete;
    LatencyProbe& operator=(const LatencyProbe&) = delete;

    [[nodiscard]] Result<void> register_probe() { return register_kretprobe(probe_); }
    // Errc::NotRegistered when it is not registered.  Once it returns no
    // call is recorded any more, including calls still pending.
    Result<void> unregister_probe() {
        if (!probe_.is_registered())
            return make_error(Errc::NotRegistered, "latency probe on '" + describe_target() + "' is not registered");
        unregister_kretprobe(probe_);
        return {};
    }
    [[nodiscard]] bool is_registered() const noexcept { return probe_.is_registered(); }

    // The counters now (see LatencyHistogram on consistency).
    [[nodiscard]] LatencyHistogram snapshot() const noexcept {
        LatencyHistogram histogram;
        histogram.count = count_.load(std::memory_order_relaxed);
        histogram.sum_ns = sum_ns_.load(std::memory_order_relaxed);
        const auto min_ns = min_ns_.load(std::memory_order_relaxed);
        histogram.min_ns = min_ns == no_minimum ? 0 : min_ns;
        histogram.max_ns = max_ns_.load(std::memory_order_relaxed);
        for (std::size_t bucket = 0; bucket < LatencyHistogram::bucket_count; ++bucket)
            histogram.buckets[bucket] = buckets_[bucket].load(std::memory_order_relaxed);
        return histogram;
    }
    [[nodiscard]] std::string format_histogram() const { return snapshot().format_histogram(); }

    // Zeroes the counters.  Calls recorded meanwhile may be partly lost.
    void reset() noexcept {
        count_.store(0, std::memory_order_relaxed);
        sum_ns_.store(0, std::memory_order_relaxed);
        min_ns_.store(no_minimum, std::memory_order_relaxed);
        max_ns_.store(0, std::memory_order_relaxed);
        for (auto& bucket : buckets_) bucket.store(0, std::memory_order_relaxed);
    }

    // The underlying return probe: set maxactive or kp.flags before
    // registering, read nmissed(), nabandoned(), kp.address().  Do not
    // replace its handlers or data_size.
    [[nodiscard]] Kretprobe& kretprobe() noexcept { return probe_; }
    [[nodiscard]] const Kretprobe& kretprobe() const noexcept { return probe_; }

private:
    static constexpr std::uint64_t no_minimum = std::numeric_limits<std::uint64_t>::max();

    static std::uint64_t now_ns() noexcept {
        timespec now{};
        clock_gettime(CLOCK_MONOTONIC, &now);
        return static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(now.tv_nsec);
    }

    // Both run in signal or trampoline context: atomics only (fact 1).
    Kretprobe make_kretprobe() {
        return Kretprobe{
            .kp = {},
            .handler =
                [this](KretprobeInstance& instance, Regs&) {
                    record(now_ns() - *static_cast<const std::uint64_t*>(instance.data));
                    return 0;
                },
            .entry_handler =
                [](KretprobeInstance& instance, Regs&) {
                    *static_cast<std::uint64_t*>(instance.data) = now_ns();
                    return 0;
                },
            .data_size = sizeof(std::uint64_t),
            .maxactive = 0,
        };
    }

    void record(std::uint64_t duration_ns) noexcept {
        buckets_[LatencyHistogram::bucket_of(duration_ns)].fetch_add(1, std::memory_order_relaxed);
        sum_ns_.fetch_add(duration_ns, std::memory_order_relaxed);
        auto low = min_ns_.load(std::memory_order_relaxed);
        while (duration_ns < low && !min_ns_.compare_exchange_weak(low, duration_ns, std::memory_order_relaxed)) {}
        auto high = max_ns_.load(std::memory_order_relaxed);
        while (duration_ns > high && !max_ns_.compare_exchange_weak(high, duration_ns, std::memory_order_relaxed)) {}
        count_.fetch_add(1, std::memory_order_relaxed);
    }

    std::string describe_target() const {
        if (!probe_.kp.symbol_name.empty()) return probe_.kp.symbol_name;
        char text[2 + 16 + 1];
        const auto length = std::snprintf(text, sizeof text, "%#lx", reinterpret_cast<unsigned long>(probe_.kp.addr));
        return std::string(text, static_cast<std::size_t>(length));
    }

    // Declared before probe_ so that they outlive it: a registered probe_
    // unregisters itself when destroyed, after its last handler call ends.
    std::atomic<std::uint64_t> count_{0};
    std::atomic<std::uint64_t> sum_ns_{0};
    std::atomic<std::uint64_t> min_ns_{no_minimum};
    std::atomic<std::uint64_t> max_ns_{0};
    std::array<std::atomic<std::uint64_t>, LatencyHistogram::bucket_count> buckets_{};
    Kretprobe probe_;
};

}  // namespace ukp
