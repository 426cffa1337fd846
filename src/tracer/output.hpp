// Writing traced events out, and printing the aggregations at the end of a
// run.  Pure formatting: nothing here knows rings, probes or the agent; the
// reader hands over DecodedEvent (event.hpp) and the counters hand over plain
// numbers.
//
// Three event formats:
//
// - text: the kernel's trace_pipe line (Documentation/trace/ftrace.rst,
//   kernel/trace/trace_output.c trace_print_context, trace_kprobe.c
//   print_kprobe_event, trace_probe.c print_type_*):
//
//       "%16s-%-7d [%03d] ..... %5lu.%06lu: EVENT: (LOCATION) NAME=VALUE..."
//
//   The flags column is "....." because a user-space probe has no irq,
//   need-resched, hardirq/softirq, preempt-count or migrate-disable state to
//   report: the kernel prints a '.' for each of those when clear.  The kernel
//   rounds the timestamp to the nearest microsecond (ns2usecs adds 500 ns
//   before dividing); so do we.  Values print as print_type_* does: u* "%u",
//   s* "%d", x* "0x%x", symbol "%pS" (ready-made here), string "\"%s\"",
//   a failed fetch "(fault)", arrays "{a,b,c}".  Two departures, both to
//   keep one event per line: control bytes (0x00-0x1f, 0x7f) inside strings,
//   comm and char values print as \xNN where the kernel prints them raw; and
//   char values that are not printable print as '\xNN' (the kernel's char
//   type prints '%c' whatever the byte).
//
// - json: JSON Lines, one object per event:
//
//       {"ts_ns":N,"pid":N,"tid":N,"cpu":N,"comm":S,"group":S,"event":S,
//        "type":"entry"|"return","location":S,
//        "entry_ts_ns":N,"duration_ns":N,      <- return events only
//        "args":{NAME:VALUE,...},
//        "faults":[NAME,...]}                   <- only when a fetch faulted
//
//   Numbers are JSON numbers with every digit (a u64 above 2^53 stays exact
//   in the text; readers that parse into doubles lose precision, not us).
//   Hex values are strings "0x1f" (the type asked for hex, and JSON has no
//   hex numbers); Char is a one-character string; String and Symbol are
//   strings; Array is a JSON array.  A value whose memory could not be read
//   is null, and its name goes into "faults" ("buf[2]" for an array element)
//   so that null never has to be guessed at.  Strings are escaped as RFC 8259
//   requires; bytes that are not well-formed UTF-8 (RFC 3629: no overlongs,
//   no surrogates, nothing above U+10FFFF) become U+FFFD, one per byte, so
//   every line is valid JSON whatever the traced program's memory held.
//
// - perfetto: the Chrome Trace Event Format, JSON Object form, which
//   ui.perfetto.dev and chrome://tracing open:
//
//       {"displayTimeUnit":"ns","otherData":{...},"traceEvents":[
//       {"ph":"M","name":"process_name",...},   <- first event of a process's main thread
//       {"ph":"M","name":"thread_name",...},    <- first event of a thread, and when its name changes
//       {"ph":"i","s":"t",...},                 <- entry events: thread-scoped instants
//       {"ph":"X","dur":D,...}                  <- return events: the whole call as a slice
//       ]}
//
//   "ts" and "dur" are microseconds (the format's unit) written with three
//   decimals, so nanoseconds survive exactly.  A slice starts at
//   entry_timestamp_ns.  Args are the fields as in json, except that a
//   faulted value is the string "(fault)": this format is for people
//   looking at a timeline.  Process names come from the main thread's comm
//   (tid == pid); a process whose main thread never hit a probe shows as
//   "Process N".  traceEvents is the last key, so finish() closes the
//   document with "]}" alone.
//
// Buffering: each writer formats into one reusable memory buffer and hands
// it to the stream (fwrite, or write(2) for a descriptor) when it holds
// 64 KiB, on flush(), on finish(), and after every event when
// WriterOptions::flush_every_event asks for it (a terminal, `| grep`).
// The stream or descriptor stays the caller's: writers never close it.
// Writing to a closed pipe raises SIGPIPE; ignoring it, so that the EPIPE
// comes back as an Error, is the caller's choice.
//
// Aggregations are printed the way bpftrace prints them (log2 histograms,
// `@count[key]: N` maps) and the kernel prints kprobe_profile.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "tracer/event.hpp"
#include "ukprobes/error.hpp"

namespace ukp::tracer {

// ---------------------------------------------------------------------------
// Event writers

enum class Format { Text, Json, Perfetto };

// "text", "json", "perfetto"; nullopt for anything else.
[[nodiscard]] std::optional<Format> parse_format(std::string_view name);
[[nodiscard]] std::string_view name_of(Format format);

struct WriterOptions {
    // Hand each event to the stream (and fflush it) as soon as it is
    // formatted, for someone watching the output live.
    bool flush_every_event = false;
};

class EventWriter {
public:
    virtual ~EventWriter() = default;

    // Formats the event into the writer's buffer; hands the buffer to the
    // stream when it is full or the options ask for it.  An Error is a
    // failed write to the stream (SystemError with its errno), or a write
    // after finish() (InvalidArgument); the bytes of a failed write are lost.
    [[nodiscard]] virtual Result<void> write(const DecodedEvent& event) = 0;

    // Everything formatted so far reaches the stream; a FILE* is fflush'ed.
    [[nodiscard]] virtual Result<void> flush() = 0;

    // Closes the document (perfetto: "]}") and flushes.  Once only: later
    // calls do nothing.  A writer destroyed without finish() finishes in its
    // destructor, where an error cannot be reported: call finish().
    [[nodiscard]] virtual Result<void> finish() = 0;
};

// The writer does not own `stream` / `fd`; it must outlive the writer.
// A descriptor in non-blocking mode is waited on (poll) when full.
[[nodiscard]] std::unique_ptr<EventWriter> make_writer(Format format, std::FILE* stream,
                                                       WriterOptions options = {});
[[nodiscard]] std::unique_ptr<EventWriter> make_writer(Format format, int fd,
                                                       WriterOptions options = {});

// ---------------------------------------------------------------------------
// Log2 histogram

// 65 buckets over u64 values: bucket 0 holds the value 0, bucket k (1..64)
// holds [2^(k-1), 2^k).  So 1 -> 1, 2 and 3 -> 2, 4..7 -> 3, 2^63 and
// UINT64_MAX -> 64.  The agent may count into a plain array of 65 u64 in
// shared memory with bucket_of() and hand the array over (from_buckets).
class Log2Histogram {
public:
    static constexpr std::size_t bucket_count = 65;
    using Buckets = std::array<std::uint64_t, bucket_count>;

    [[nodiscard]] static constexpr unsigned bucket_of(std::uint64_t value) {
        return static_cast<unsigned>(std::bit_width(value));
    }
    // Smallest value of bucket k: 0, 1, 2, 4, ..., 2^63.
    [[nodiscard]] static constexpr std::uint64_t bucket_lowest(unsigned bucket) {
        return bucket == 0 ? 0 : std::uint64_t{1} << (bucket - 1);
    }
    // Largest value of bucket k: 0, 1, 3, 7, ..., UINT64_MAX.
    [[nodiscard]] static constexpr std::uint64_t bucket_highest(unsigned bucket) {
        return bucket == 0 ? 0 : bucket == 64 ? UINT64_MAX : (std::uint64_t{1} << bucket) - 1;
    }

    // Buckets only: count comes from the buckets; min, max and the average
    // are known only as far as the buckets bound them (has_exact_totals()
    // is false and the summary line says so).
    [[nodiscard]] static Log2Histogram from_buckets(std::span<const std::uint64_t, bucket_count> buckets);
    // Buckets plus the totals the counter kept beside them.
    [[nodiscard]] static Log2Histogram from_buckets(std::span<const std::uint64_t, bucket_count> buckets,
                                                    unsigned __int128 sum, std::uint64_t min,
                                                    std::uint64_t max);

    void add(std::uint64_t value);
    // Exact totals stay exact only if both sides had them.
    void merge(const Log2Histogram& other);

    [[nodiscard]] const Buckets& buckets() const { return buckets_; }
    [[nodiscard]] std::uint64_t count() const { return count_; }
    // 128 bits: 2^64 values near UINT64_MAX do not overflow it.
    [[nodiscard]] unsigned __int128 sum() const { return sum_; }
    // 0 when empty.  Without exact totals: min is the lowest value of the
    // first non-empty bucket, max the highest of the last, and sum and
    // average are lower bounds (each value counted as its bucket's lowest).
    [[nodiscard]] std::uint64_t min() const { return min_; }
    [[nodiscard]] std::uint64_t max() const { return max_; }
    [[nodiscard]] std::uint64_t average() const;  // floor(sum / count)
    [[nodiscard]] bool has_exact_totals() const { return exact_totals_; }
    [[nodiscard]] bool empty() const { return count_ == 0; }

private:
    Buckets buckets_{};
    std::uint64_t count_ = 0;
    unsigned __int128 sum_ = 0;
    std::uint64_t min_ = 0;
    std::uint64_t max_ = 0;
    bool exact_totals_ = true;
};

struct HistogramPrintOptions {
    // Appended to min/avg/max in the summary line ("ns" -> "min 120ns").
    // Bucket labels stay bpftrace's plain powers of two.
    std::string_view unit;
    bool summary = true;
};

// bpftrace's hist() rendering, over the non-empty range only:
//
//   @latency_ns[malloc]:
//   [0]                    3 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |
//   [1]                    0 |                                                    |
//   [2, 4)                 6 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
//   [4, 8)                 1 |@@@@@@@@                                            |
//   count 10, min 0ns, avg 2ns, max 5ns
//
// Empty buckets between the first and last non-empty ones are printed.
// Label left-aligned in 16 columns, count right-aligned in 8, bar of
// floor(52 * count / fullest) '@' in 52 columns.  Labels use K, M, G, T, P, E
// for powers of 1024; the top bucket is [8E, 16E).  No title line when
// `title` is empty.  Without exact totals the summary reads
// "count N, min >= LO, max <= HI" from the outermost non-empty buckets.
[[nodiscard]] std::string format_histogram(std::string_view title, const Log2Histogram& histogram,
                                           const HistogramPrintOptions& options = {});

// "[2, 4)", "[1K, 2K)", "[0]", "[1]": bucket k's label as bpftrace prints it.
[[nodiscard]] std::string histogram_bucket_label(unsigned bucket);

// ---------------------------------------------------------------------------
// Profile table and counts

struct ProfileRow {
    std::string event;
    std::uint64_t hits = 0;
    std::uint64_t misses = 0;  // the kernel's nmissed: hits the handler was not run for
    std::uint64_t lost = 0;    // events dropped because the ring was full
    std::uint64_t faults = 0;  // events with at least one fetch that faulted
};

struct ProfileOptions {
    bool header = false;       // a first line naming the columns
    bool show_lost = false;
    bool show_faults = false;
};

// The kernel's kprobe_profile: "  %-44s %15lu %15lu\n" (event, hits, misses)
// per row, in the order given; lost and faults add "%15lu" columns.  With no
// header and no optional column the output is byte for byte the kernel's,
// unless an event name is longer than 44 bytes: then the name column widens
// for every row so that the numbers stay aligned.
[[nodiscard]] std::string format_profile(std::span<const ProfileRow> rows,
                                         const ProfileOptions& options = {});

struct CountEntry {
    std::string key;
    std::uint64_t count = 0;
};

// `--count`: "@count[KEY]: N" per line, the largest count first (ties by
// key, so the output is stable).  bpftrace prints its maps the other way up
// (largest last); a tracer's summary reads better with the hottest first.
// An empty `key` prints "@count: N".
[[nodiscard]] std::string format_counts(std::string_view map_name, std::span<const CountEntry> entries);

}  // namespace ukp::tracer
