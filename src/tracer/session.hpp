// The memory ukprobe and its agent share: definitions going in, events,
// counters and messages coming out.
//
// `ukprobe run` creates a memfd, lays this out in it, and passes the fd to
// the traced program, whose preloaded agent maps it too.  Everything the
// agent produces lives here rather than in the agent's own memory, so the
// tracer still reads every event a program wrote before it crashed, called
// _exit, or was killed.  Nothing in here is a pointer: the two processes
// map it at different addresses.
//
// Facts it relies on:
// - Lock-free std::atomic<uint64_t>/<uint32_t> are plain memory words, so
//   they work between processes sharing the mapping (C++ guarantees this for
//   lock-free atomics; static_asserts below check is_always_lock_free).
// - A memfd's pages are allocated on first touch: rings and histograms that
//   no thread uses cost address space, not memory.
//
// Rings: one per thread (claimed on the thread's first hit, released when it
// exits), single producer (that thread, in its probe handler: no locks, no
// allocation, no system call) and single consumer (the tracer).  `head` and
// `tail` count bytes ever written and consumed; a record never wraps: when
// it does not fit before the end, a padding record fills the rest.  A full
// ring drops the new record and counts it (`lost`), never blocks.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "tracer/definition.hpp"

namespace ukp::tracer {

inline constexpr std::uint64_t session_magic = 0x31736562'6f72706bULL;  // "kprobes1"
inline constexpr std::uint32_t session_version = 1;

// What the agent does with a hit (chosen with `ukprobe run` options).
enum SessionMode : std::uint32_t {
    mode_stream = 1,   // write a record to the thread's ring
    mode_count = 2,    // count hits per event (--count)
    mode_hist = 4,     // log2 histogram of one field per event (--hist FIELD)
    mode_latency = 8,  // log2 histogram of call durations per return event (--latency)
};

// How record timestamps are taken.  Tsc: raw rdtsc ticks, converted by the
// tracer with the calibration below (constant, non-stop TSC only).
// Monotonic: CLOCK_MONOTONIC nanoseconds.
enum class ClockKind : std::uint32_t { Monotonic = 0, Tsc = 1 };

inline constexpr std::size_t histogram_buckets = 65;

// How one fetch arg is laid out in a record, after the header and a fault
// bitmap of one bit per arg padded to 8 bytes.  The agent's hit path writes
// it, the tracer's decoder reads it: both ask here.
enum class FieldLayout : std::uint8_t {
    Numbers,  // 8 bytes per element (one for a scalar), zero/sign-extended per the type
    String,   // a 2-byte length, then the bytes (no NUL)
    Strings,  // string[N]: N of those
};

[[nodiscard]] inline FieldLayout field_layout(const FetchArg& arg) noexcept {
    bool string_type = arg.type.kind == FetchType::Kind::String || arg.type.kind == FetchType::Kind::UString;
    if (string_type && arg.type.array_length != 0) return FieldLayout::Strings;
    if (string_type || arg.root == FetchRoot::Comm || arg.root == FetchRoot::StringImmediate)
        return FieldLayout::String;
    return FieldLayout::Numbers;
}

struct RecordHeader {
    std::uint32_t size;   // whole record, header included, 8-byte multiple
    std::uint16_t event;  // index into the event table; padding_event for padding
    std::uint16_t cpu;
    std::int32_t pid;
    std::int32_t tid;
    std::uint64_t timestamp;        // see ClockKind
    std::uint64_t entry_timestamp;  // return events: when the call began; 0 otherwise
    std::uint64_t location;         // entry: the probe address; return: the return address
};
static_assert(sizeof(RecordHeader) == 40);
inline constexpr std::uint16_t padding_event = 0xFFFF;
inline constexpr std::size_t max_events = 0xFFF0;

struct alignas(64) RingHeader {
    std::atomic<std::uint64_t> head;  // the producer's: bytes written
    char pad0[56];
    std::atomic<std::uint64_t> tail;  // the consumer's: bytes consumed
    char pad1[56];
    std::atomic<std::uint64_t> lost;        // records dropped: ring full
    std::atomic<std::int32_t> owner;        // tid of the thread using it, 0 when free
    std::atomic<std::uint32_t> generation;  // bumped at each claim
    // The owner's name when it claimed the ring, for threads that are gone
    // by the time the tracer reads their records.
    std::atomic<std::int32_t> comm_tid;
    char comm[16];
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::int32_t>::is_always_lock_free);

// One probe the agent armed.  Written once by the agent, then published by
// bumping SessionHeader::event_count.
struct EventEntry {
    std::uint32_t definition;  // index of the definition line it came from
    std::uint32_t is_return;
    std::uint64_t address;     // where the probe is
    char group[32];
    char event[64];
    char function[96];         // "sym+0x0" or "0x7f..." when no symbol
    char module[96];           // basename
    // How the engine probes it ("optimized", "boosted", ...) and why it is
    // not optimized; refreshed by the agent after arming and each dlopen.
    char kind[24];
    char not_optimized[104];
};

// One loaded ELF object, so the tracer can name addresses (symbol types,
// return sites) from the files, even after the program has exited.
struct ModuleEntry {
    std::uint64_t bias;  // load bias: runtime address = bias + ELF address
    char path[248];
};
inline constexpr std::size_t max_modules = 4096;

struct alignas(64) EventCounters {
    std::atomic<std::uint64_t> hits;      // handler ran (before the filter)
    std::atomic<std::uint64_t> filtered;  // the filter said no
    std::atomic<std::uint64_t> lost;      // ring full or no ring
    std::atomic<std::uint64_t> missed;    // the engine's nmissed (recursion), written at exit
    std::atomic<std::uint64_t> faults;    // a fetch read a bad address
    std::atomic<std::uint64_t> counted;   // --count: hits that passed the filter
};

struct HistogramArea {
    std::atomic<std::uint64_t> buckets[histogram_buckets];
    std::atomic<std::uint64_t> count, sum, min, max;
};

struct SessionHeader {
    std::uint64_t magic;
    std::uint32_t version;
    std::uint32_t header_size;
    std::uint64_t total_size;
    // Written by the tracer before the program starts.
    std::uint32_t mode;               // SessionMode bits
    std::uint32_t clock;              // ClockKind
    std::uint64_t tsc_base;           // ClockKind::Tsc: tsc_base ticks is monotonic_base ns,
    std::uint64_t monotonic_base;     //   and ns = monotonic_base + (ticks - tsc_base) * tsc_mult >> tsc_shift
    std::uint64_t tsc_mult;
    std::uint32_t tsc_shift;
    std::uint32_t string_limit;       // bytes of one fetched string, NUL included
    std::uint32_t ring_count;
    std::uint32_t ring_bytes;         // power of two
    std::uint64_t definitions_offset; // text, one definition per line
    std::uint32_t definitions_length;
    std::uint32_t hist_field_length;
    char hist_field[64];              // --hist FIELD
    std::uint64_t events_offset;      // EventEntry[max_events]
    std::uint64_t counters_offset;    // EventCounters[max_events]
    std::uint64_t histograms_offset;  // HistogramArea[max_events], when mode has hist or latency
    std::uint64_t modules_offset;     // ModuleEntry[max_modules]
    std::uint64_t messages_offset;    // text the agent reports (warnings, errors)
    std::uint32_t messages_capacity;
    std::uint32_t pad0;
    std::uint64_t rings_offset;       // ring i at rings_offset + i * (sizeof(RingHeader) + ring_bytes)
    // Written by the agent.
    std::atomic<std::uint32_t> agent_state;  // AgentState
    std::atomic<std::uint32_t> event_count;  // entries of the event table published
    std::atomic<std::uint32_t> messages_length;
    std::atomic<std::uint32_t> module_count;
    std::atomic<std::int32_t> agent_pid;
    std::atomic<std::uint64_t> lost_no_ring;  // hits dropped because every ring was taken
    std::atomic<std::uint64_t> messages_dropped;
};

enum class AgentState : std::uint32_t { Starting = 0, Armed = 1, Failed = 2, Finished = 3 };

struct SessionOptions {
    std::uint32_t mode = mode_stream;
    std::uint32_t ring_count = 256;
    std::uint32_t ring_bytes = 1u << 20;
    std::uint32_t string_limit = 256;
    std::string_view hist_field;
};

// A mapped session, from either side.
class Session {
public:
    // The tracer: a new memfd holding `definitions` (one per line).  Returns
    // an invalid Session and sets `error` on failure.
    static Session create(std::string_view definitions, const SessionOptions& options, std::string* error);
    // The agent: maps the memfd `fd` (then closes it).
    static Session attach(int fd, std::string* error);

    Session() = default;
    Session(Session&& other) noexcept;
    Session& operator=(Session&& other) noexcept;
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;
    ~Session();

    [[nodiscard]] bool valid() const noexcept { return header_ != nullptr; }
    [[nodiscard]] int fd() const noexcept { return fd_; }
    [[nodiscard]] SessionHeader& header() const noexcept { return *header_; }
    [[nodiscard]] std::string_view definitions() const noexcept;
    // Inline: the hit path calls these on every hit.
    [[nodiscard]] EventEntry& event(std::size_t index) const noexcept {
        return reinterpret_cast<EventEntry*>(base() + header_->events_offset)[index];
    }
    [[nodiscard]] EventCounters& counters(std::size_t index) const noexcept {
        return reinterpret_cast<EventCounters*>(base() + header_->counters_offset)[index];
    }
    [[nodiscard]] ModuleEntry& module(std::size_t index) const noexcept {
        return reinterpret_cast<ModuleEntry*>(base() + header_->modules_offset)[index];
    }
    // nullptr when the session keeps no histograms.
    [[nodiscard]] HistogramArea* histogram(std::size_t index) const noexcept {
        if (header_->histograms_offset == 0) return nullptr;
        return reinterpret_cast<HistogramArea*>(base() + header_->histograms_offset) + index;
    }
    [[nodiscard]] RingHeader& ring(std::size_t index) const noexcept {
        return *reinterpret_cast<RingHeader*>(base() + header_->rings_offset +
                                              index * (sizeof(RingHeader) + std::size_t{header_->ring_bytes}));
    }
    [[nodiscard]] std::uint8_t* ring_data(std::size_t index) const noexcept {
        return reinterpret_cast<std::uint8_t*>(&ring(index)) + sizeof(RingHeader);
    }

    // The agent reports a line (a newline is added); thread-safe, not for
    // the hit path.
    void report(std::string_view line) const noexcept;
    // The tracer: lines reported since `*consumed`; advances it.
    [[nodiscard]] std::string_view reports(std::uint32_t* consumed) const noexcept;

    // ticks as nanoseconds of CLOCK_MONOTONIC.
    [[nodiscard]] std::uint64_t to_nanoseconds(std::uint64_t timestamp) const noexcept;

private:
    [[nodiscard]] char* base() const noexcept { return reinterpret_cast<char*>(header_); }
    SessionHeader* header_ = nullptr;
    std::size_t size_ = 0;
    int fd_ = -1;
};

// --- The hit path ----------------------------------------------------------

// Space for one record in a ring, or a null data pointer when the ring is
// full (the drop is counted by the caller).
struct Reservation {
    std::uint8_t* data = nullptr;
    std::uint64_t head = 0;  // head after the record
};

// Reserves `size` bytes (a multiple of 8, header included) in ring `index`.
// Only the ring's owner thread may call it.  Inline: it is on every hit.
//
// `known_tail` is the producer's own copy of the consumer's tail: the tail's
// cache line is read again only when that copy says the ring is full, not on
// every record (the line moves to the consumer's core each time it frees
// space).  The tail only grows, so an old copy can only understate the room.
[[nodiscard]] inline Reservation reserve(const Session& session, std::size_t index, std::uint32_t size,
                                         std::uint64_t& known_tail) noexcept {
    RingHeader& ring = session.ring(index);
    const std::uint64_t capacity = session.header().ring_bytes;
    std::uint64_t head = ring.head.load(std::memory_order_relaxed);
    std::uint64_t offset = head & (capacity - 1);
    std::uint64_t padding = capacity - offset < size ? capacity - offset : 0;
    if (head + padding + size - known_tail > capacity) {
        known_tail = ring.tail.load(std::memory_order_acquire);
        if (head + padding + size - known_tail > capacity) return {};
    }
    std::uint8_t* data = session.ring_data(index);
    if (padding != 0) {
        auto* filler = reinterpret_cast<RecordHeader*>(data + offset);
        filler->size = static_cast<std::uint32_t>(padding);
        filler->event = padding_event;
        head += padding;
        offset = 0;
    }
    return {data + offset, head + size};
}

// Publishes a reserved record (shrunk to `size`, which may be smaller than
// reserved).
inline void commit(const Session& session, std::size_t index, const Reservation& reservation, std::uint32_t reserved,
                   std::uint32_t size) noexcept {
    reinterpret_cast<RecordHeader*>(reservation.data)->size = size;
    session.ring(index).head.store(reservation.head - reserved + size, std::memory_order_release);
}

// The tracer side: calls `consume(header, bytes)` for each record of ring
// `index` written since the last call, then frees their space.
template <typename Consume>
std::size_t drain(const Session& session, std::size_t index, Consume&& consume) {
    RingHeader& ring = session.ring(index);
    const std::uint8_t* data = session.ring_data(index);
    const std::uint64_t mask = session.header().ring_bytes - 1;
    std::uint64_t tail = ring.tail.load(std::memory_order_relaxed);
    const std::uint64_t head = ring.head.load(std::memory_order_acquire);
    std::size_t records = 0;
    while (tail < head) {
        const auto* record = reinterpret_cast<const RecordHeader*>(data + (tail & mask));
        // Never trust the other side's sizes.  Padding may be shorter than a
        // header (only its size and event are written).
        if (record->size < 8 || record->size % 8 != 0 || record->size > head - tail) break;
        if (record->event != padding_event) {
            if (record->size < sizeof(RecordHeader)) break;
            consume(*record, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(record), record->size));
            ++records;
        }
        tail += record->size;
    }
    ring.tail.store(head, std::memory_order_release);
    return records;
}

}  // namespace ukp::tracer
