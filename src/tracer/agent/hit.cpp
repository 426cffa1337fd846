// The agent's hit path (see hit.hpp): fetch, filter, record, aggregate.
//
// Facts it relies on:
// - On a constant, non-stop TSC, rdtscp gives a timestamp every CPU agrees
//   on and, in TSC_AUX, the CPU number (Linux stores cpu | node << 12).
// - System V x86-64: at a function's first instruction [rsp] is the return
//   address, integer arguments 1-6 are in rdi rsi rdx rcx r8 r9 and the
//   seventh is at rsp + 8.  $argN assumes it (as the kernel's does).
// - Reads of the program's memory go through ukp::read_memory/read_string:
//   a bad pointer marks the field as faulted, it never faults the program.
#include "tracer/agent/hit.hpp"

#include "tracer/output.hpp"

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <cpuid.h>
#include <x86intrin.h>

#include <cstring>
#include <string>

namespace ukp::tracer::agent {

namespace {

// Thread state of the hit path.  Initial-exec TLS: no allocation and no
// call into the dynamic linker on first use (the agent is preloaded).
constexpr int ring_none = -1;  // not claimed yet
constexpr int ring_dead = -2;  // the thread is exiting: its ring was released
__thread int ring_index = ring_none;
__thread int thread_tid = 0;
__thread char thread_comm[16];
__thread int quiet_depth = 0;
__thread std::uint64_t ring_known_tail = 0;  // reserve()'s copy of this thread's ring's tail

int process_pid = 0;
pthread_key_t ring_key;
std::atomic<std::uint32_t> claim_hint{0};
const Session* hit_session = nullptr;

bool has_rdpid = false;

inline std::uint16_t current_cpu() {
    if (has_rdpid) {
        std::uint64_t processor;
        asm volatile("rdpid %0" : "=r"(processor));
        return static_cast<std::uint16_t>(processor & 0xFFF);  // Linux: cpu | node << 12
    }
    return static_cast<std::uint16_t>(sched_getcpu());
}

void release_ring(void*) {
    if (ring_index >= 0) hit_session->ring(static_cast<std::size_t>(ring_index)).owner.store(0, std::memory_order_release);
    ring_index = ring_dead;
}

int claim_ring(const Session& session) {
    if (ring_index == ring_dead) return -1;
    thread_tid = static_cast<int>(syscall(SYS_gettid));
    prctl(PR_GET_NAME, thread_comm, 0, 0, 0);
    std::uint32_t count = session.header().ring_count;
    std::uint32_t start = claim_hint.fetch_add(1, std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < count; ++i) {
        std::uint32_t index = (start + i) % count;
        RingHeader& ring = session.ring(index);
        std::int32_t expected = 0;
        if (ring.owner.load(std::memory_order_relaxed) == 0 &&
            ring.owner.compare_exchange_strong(expected, thread_tid, std::memory_order_acquire)) {
            __builtin_memcpy(ring.comm, thread_comm, sizeof ring.comm);
            ring.comm_tid.store(thread_tid, std::memory_order_release);
            ring.generation.fetch_add(1, std::memory_order_relaxed);
            ring_index = static_cast<int>(index);
            ring_known_tail = ring.tail.load(std::memory_order_acquire);
            // A non-null value makes pthread run release_ring at thread exit;
            // with a key taken at startup this stores into the thread's
            // static key array: no allocation.
            pthread_setspecific(ring_key, reinterpret_cast<void*>(1));
            return ring_index;
        }
    }
    return -1;
}

std::optional<std::uint64_t> resolve_data_symbol(const std::string& name) {
    if (void* found = dlsym(RTLD_DEFAULT, name.c_str()); found != nullptr) return reinterpret_cast<std::uint64_t>(found);
    // Not exported: a function (local ones too) from the symbol tables.
    if (auto functions = ukp::find_functions("", name); functions && functions->size() == 1)
        return functions->front().address;
    return std::nullopt;
}

inline const unsigned long* register_file(const Regs& regs) { return reinterpret_cast<const unsigned long*>(&regs); }

inline bool read_u64(std::uint64_t address, std::uint64_t* out) {
    return ukp::read_memory(out, reinterpret_cast<const void*>(address), sizeof *out);
}

// The value before the final memory read; false when an intermediate read
// faulted.  `*final_address` is where the final read (if any) happens.
inline bool base_value(const CompiledArg& arg, const Regs& regs, const std::uint64_t* entry_arguments,
                       std::uint64_t* value) {
    switch (arg.root) {
    case FetchRoot::Register:
        *value = register_file(regs)[arg.register_index];
        return true;
    case FetchRoot::Memory:
    case FetchRoot::Symbol:
    case FetchRoot::FileOffset:
    case FetchRoot::Immediate:
        *value = arg.address;
        return true;
    case FetchRoot::StackEntry:
        return read_u64(regs.sp + 8ull * arg.index, value);
    case FetchRoot::StackPointer:
        *value = regs.sp;
        return true;
    case FetchRoot::Argument:
        if (entry_arguments != nullptr) {
            *value = entry_arguments[arg.index - 1];
            return true;
        }
        switch (arg.index) {
        case 1: *value = regs.di; return true;
        case 2: *value = regs.si; return true;
        case 3: *value = regs.dx; return true;
        case 4: *value = regs.cx; return true;
        case 5: *value = regs.r8; return true;
        case 6: *value = regs.r9; return true;
        default: return read_u64(regs.sp + 8ull * (arg.index - 6), value);
        }
    case FetchRoot::ReturnValue:
        *value = regs.ax;
        return true;
    case FetchRoot::Comm:
    case FetchRoot::StringImmediate:
        *value = 0;
        return true;
    }
    return false;
}

inline std::uint64_t extend(std::uint64_t value, const CompiledArg& arg) {
    unsigned bits = arg.size * 8u;
    if (arg.kind == FetchType::Kind::Bitfield) {
        value >>= arg.bit_offset;
        return arg.bit_width >= 64 ? value : value & ((1ull << arg.bit_width) - 1);
    }
    if (bits >= 64) return value;
    value &= (1ull << bits) - 1;
    if (arg.kind == FetchType::Kind::Signed && (value >> (bits - 1)) != 0) value |= ~0ull << bits;
    return value;
}

inline std::uint64_t load_element(const std::uint8_t* bytes, unsigned size) {
    switch (size) {
    case 1: return bytes[0];
    case 2: { std::uint16_t v; __builtin_memcpy(&v, bytes, 2); return v; }
    case 4: { std::uint32_t v; __builtin_memcpy(&v, bytes, 4); return v; }
    default: { std::uint64_t v; __builtin_memcpy(&v, bytes, 8); return v; }
    }
}

std::size_t fetch_field_slow(const CompiledArg& arg, const Regs& regs, const std::uint64_t* entry_arguments,
                             std::uint8_t* out, std::uint32_t string_limit, bool* faulted,
                             Filter::Value* filter_value);

// Writes one field at `out`; returns its length in the record.  Sets
// `*faulted` when the program's memory could not be read, and fills
// `filter_value` for the filter.
inline std::size_t fetch_field(const CompiledArg& arg, const Regs& regs, const std::uint64_t* entry_arguments,
                               std::uint8_t* out, std::uint32_t string_limit, bool* faulted,
                               Filter::Value* filter_value) {
    if (arg.register_scalar) {
        std::uint64_t value = register_file(regs)[arg.register_index];
        unsigned unused = 64u - arg.width_bits;
        value = arg.is_signed ? static_cast<std::uint64_t>(static_cast<std::int64_t>(value << unused) >> unused)
                              : (value << unused) >> unused;
        __builtin_memcpy(out, &value, 8);
        *faulted = false;
        if (filter_value) *filter_value = {value, {}, false};
        return 8;
    }
    return fetch_field_slow(arg, regs, entry_arguments, out, string_limit, faulted, filter_value);
}

[[gnu::noinline]] std::size_t fetch_field_slow(const CompiledArg& arg, const Regs& regs,
                                               const std::uint64_t* entry_arguments, std::uint8_t* out,
                                               std::uint32_t string_limit, bool* faulted,
                                               Filter::Value* filter_value) {
    std::uint64_t value = 0;
    bool ok = base_value(arg, regs, entry_arguments, &value);
    // Every read but the last yields a pointer.
    unsigned reads = arg.deref_count;
    for (unsigned i = 0; ok && i + 1 < reads; ++i) ok = read_u64(value + static_cast<std::uint64_t>(arg.derefs[i]), &value);
    std::uint64_t final_address = reads != 0 ? value + static_cast<std::uint64_t>(arg.derefs[reads - 1]) : value;

    if (arg.layout == FieldLayout::Strings) {
        // string[N]: the last read is done and yields N pointers.
        std::uint8_t* at = out;
        bool all = ok;
        for (unsigned i = 0; i < arg.array_length; ++i) {
            std::uint64_t pointer = 0;
            bool element = ok && read_u64(final_address + 8ull * i, &pointer);
            long copied = element ? ukp::read_string(reinterpret_cast<char*>(at + 2),
                                                     reinterpret_cast<const void*>(pointer), string_limit)
                                  : -1;
            if (copied < 0) {
                copied = 0;
                all = false;
            }
            auto length = static_cast<std::uint16_t>(copied);
            __builtin_memcpy(at, &length, 2);
            at += 2 + length;
        }
        *faulted = !all;
        if (filter_value) *filter_value = {0, {}, false};
        return static_cast<std::size_t>(at - out);
    }
    if (arg.layout == FieldLayout::String) {
        std::uint16_t length = 0;
        char* text = reinterpret_cast<char*>(out + 2);
        if (arg.root == FetchRoot::Comm) {
            while (length < sizeof thread_comm && thread_comm[length] != '\0') {
                text[length] = thread_comm[length];
                ++length;
            }
        } else if (arg.root == FetchRoot::StringImmediate) {
            length = arg.string_length;
            __builtin_memcpy(text, arg.string_value, length);
        } else if (ok) {
            long copied = ukp::read_string(text, reinterpret_cast<const void*>(final_address), string_limit);
            if (copied < 0) {
                ok = false;
                copied = 0;
            }
            length = static_cast<std::uint16_t>(copied);
        }
        if (!ok) length = 0;
        __builtin_memcpy(out, &length, 2);
        *faulted = !ok;
        if (filter_value) *filter_value = {0, std::string_view(text, length), true};
        return 2u + length;
    }

    unsigned count = arg.array_length == 0 ? 1 : arg.array_length;
    std::uint64_t* elements = reinterpret_cast<std::uint64_t*>(out);
    if (reads != 0) {
        // The final read: count elements of `size` bytes.  Arrays are small
        // (the parser bounds them), so a stack buffer holds them.
        std::uint8_t raw[8 * 64];
        std::size_t bytes = static_cast<std::size_t>(count) * arg.size;
        if (bytes > sizeof raw) bytes = sizeof raw, count = static_cast<unsigned>(sizeof raw / arg.size);
        if (ok) ok = ukp::read_memory(raw, reinterpret_cast<const void*>(final_address), bytes);
        for (unsigned i = 0; i < count; ++i) {
            std::uint64_t element = ok ? extend(load_element(raw + i * arg.size, arg.size), arg) : 0;
            __builtin_memcpy(&elements[i], &element, 8);
        }
    } else {
        std::uint64_t element = ok ? extend(value, arg) : 0;
        for (unsigned i = 0; i < count; ++i) __builtin_memcpy(&elements[i], &element, 8);
    }
    *faulted = !ok;
    if (filter_value) {
        std::uint64_t first;
        __builtin_memcpy(&first, elements, 8);
        *filter_value = {first, {}, false};
    }
    return 8u * count;
}

void add_to_histogram(HistogramArea& histogram, std::uint64_t value) {
    histogram.buckets[Log2Histogram::bucket_of(value)].fetch_add(1, std::memory_order_relaxed);
    histogram.count.fetch_add(1, std::memory_order_relaxed);
    histogram.sum.fetch_add(value, std::memory_order_relaxed);
    std::uint64_t seen = histogram.min.load(std::memory_order_relaxed);
    while (value < seen && !histogram.min.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
    }
    seen = histogram.max.load(std::memory_order_relaxed);
    while (value > seen && !histogram.max.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
    }
}

}  // namespace

std::uint64_t now(const Session& session) noexcept {
    if (static_cast<ClockKind>(session.header().clock) == ClockKind::Tsc) return __rdtsc();
    timespec time;
    clock_gettime(CLOCK_MONOTONIC, &time);
    return static_cast<std::uint64_t>(time.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(time.tv_nsec);
}

void initialize_hit_path(const Session& session) noexcept {
    hit_session = &session;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    has_rdpid = __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 22)) != 0;
    process_pid = getpid();
    pthread_key_create(&ring_key, release_ring);
}

QuietScope::QuietScope() noexcept { ++quiet_depth; }
QuietScope::~QuietScope() { --quiet_depth; }

void forget_ring_after_fork() noexcept {
    ring_index = ring_none;
    process_pid = getpid();
}

std::uint64_t argument_at_entry(const Regs& regs, std::uint32_t index) noexcept {
    switch (index) {
    case 1: return regs.di;
    case 2: return regs.si;
    case 3: return regs.dx;
    case 4: return regs.cx;
    case 5: return regs.r8;
    case 6: return regs.r9;
    default: {
        std::uint64_t value = 0;
        (void)read_u64(regs.sp + 8ull * (index - 6), &value);
        return value;
    }
    }
}

void on_hit(const CompiledEvent& event, const Regs& regs, std::uint64_t entry_timestamp, std::uint64_t location,
            const std::uint64_t* entry_arguments) noexcept {
    if (quiet_depth != 0) return;
    const Session& session = *event.session;
    const SessionHeader& header = session.header();
    EventCounters& counters = session.counters(event.id);
    // Streams count what they read; aggregations have nothing to read.
    if (!(header.mode & mode_stream)) counters.hits.fetch_add(1, std::memory_order_relaxed);
    int ring = ring_index;
    if (ring < 0 && (ring = claim_ring(session)) < 0) {
        session.header().lost_no_ring.fetch_add(1, std::memory_order_relaxed);
        counters.lost.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    // Aggregating modes use the reservation as scratch space and never
    // commit it, so the ring cannot fill up.
    Reservation reservation = reserve(session, static_cast<std::size_t>(ring), event.max_record, ring_known_tail);
    if (reservation.data == nullptr) {
        session.ring(static_cast<std::size_t>(ring)).lost.fetch_add(1, std::memory_order_relaxed);
        counters.lost.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    auto* record = reinterpret_cast<RecordHeader*>(reservation.data);
    record->event = event.id;
    record->pid = process_pid;
    record->tid = thread_tid;
    // rdtsc, not rdtscp: rdtscp waits for earlier instructions (~40 ns here
    // against ~27 ns), and the order of a thread's own records is the
    // ring's order anyway.  The CPU comes from rdpid where there is one.
    record->timestamp = static_cast<ClockKind>(header.clock) == ClockKind::Tsc ? __rdtsc() : now(session);
    record->cpu = current_cpu();
    record->entry_timestamp = entry_timestamp;
    record->location = location;

    std::uint8_t* bitmap = reservation.data + sizeof(RecordHeader);
    // A word at a time: a memset call would run libc's AVX-512 memset,
    // dirtying vector state the trampoline must then save on every hit.
    for (std::uint32_t word = 0; word < event.bitmap_bytes; word += 8) {
        std::uint64_t zero = 0;
        __builtin_memcpy(bitmap + word, &zero, 8);
    }
    std::uint8_t* out = bitmap + event.bitmap_bytes;
    // Filter values only when a filter or --hist needs them.
    constexpr std::uint32_t max_filtered_args = 128;
    // Left uninitialized: zeroing 4 KiB per hit would cost more than the rest.
    union Values {
        Values() {}
        Filter::Value at[max_filtered_args];
    } storage;
    Filter::Value* values = storage.at;
    bool want_values = event.filter != nullptr || event.hist_field >= 0;
    bool any_fault = false;
    for (std::uint32_t i = 0; i < event.arg_count; ++i) {
        bool faulted = false;
        Filter::Value* value = want_values && i < max_filtered_args ? &values[i] : nullptr;
        out += fetch_field(event.args[i], regs, entry_arguments, out, header.string_limit, &faulted, value);
        if (faulted) {
            bitmap[i / 8] |= static_cast<std::uint8_t>(1u << (i % 8));
            any_fault = true;
        }
    }
    if (any_fault) counters.faults.fetch_add(1, std::memory_order_relaxed);
    if (event.filter != nullptr &&
        !event.filter->matches(std::span<const Filter::Value>(values, std::min(event.arg_count, max_filtered_args)))) {
        counters.filtered.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    std::uint32_t mode = header.mode;
    if (mode & mode_stream) {
        auto size = static_cast<std::uint32_t>((out - reservation.data + 7) & ~std::ptrdiff_t{7});
        commit(session, static_cast<std::size_t>(ring), reservation, event.max_record, size);
    }
    if (mode & mode_count) counters.counted.fetch_add(1, std::memory_order_relaxed);
    if ((mode & mode_hist) && event.hist_field >= 0 && static_cast<std::uint32_t>(event.hist_field) < max_filtered_args &&
        !values[event.hist_field].is_string)
        add_to_histogram(*session.histogram(event.id), values[event.hist_field].number);
    if ((mode & mode_latency) && event.is_return && entry_timestamp != 0) {
        std::uint64_t duration = session.to_nanoseconds(record->timestamp) - session.to_nanoseconds(entry_timestamp);
        add_to_histogram(*session.histogram(event.id), duration);
    }
}

std::expected<CompiledEvent, std::string> compile_event(const Definition& definition, const Session& session,
                                                        std::uint16_t id, std::uint64_t address,
                                                        const FileOffsetResolver& file_offsets) {
    CompiledEvent event;
    event.id = id;
    event.is_return = definition.type == ProbeType::Return;
    event.address = address;
    event.session = &session;
    event.filter = definition.filter ? &*definition.filter : nullptr;
    event.arg_count = static_cast<std::uint32_t>(definition.args.size());
    event.args = new CompiledArg[definition.args.size()];
    event.bitmap_bytes = static_cast<std::uint32_t>((definition.args.size() + 63) / 64 * 8);
    std::size_t size = sizeof(RecordHeader) + event.bitmap_bytes;
    std::string_view hist_field(session.header().hist_field, session.header().hist_field_length);
    for (std::size_t i = 0; i < definition.args.size(); ++i) {
        const FetchArg& from = definition.args[i];
        CompiledArg& arg = event.args[i];
        arg.root = from.root;
        arg.kind = from.type.kind;
        arg.size = static_cast<std::uint8_t>(from.type.size == 0 ? 8 : from.type.size);
        arg.bit_width = static_cast<std::uint8_t>(from.type.bit_width);
        arg.bit_offset = static_cast<std::uint8_t>(from.type.bit_offset);
        arg.array_length = static_cast<std::uint16_t>(from.type.array_length);
        arg.register_index = static_cast<std::uint16_t>(from.register_index);
        arg.index = from.index;
        arg.address = from.address;
        std::size_t reads = 0;
        if (from.root == FetchRoot::Argument && event.is_return)
            event.entry_arguments = std::max(event.entry_arguments, from.index);
        if (from.root == FetchRoot::Memory || from.root == FetchRoot::Symbol || from.root == FetchRoot::FileOffset) {
            if (from.root == FetchRoot::FileOffset) {
                auto resolved = file_offsets ? file_offsets(from.address) : std::nullopt;
                if (!resolved)
                    return std::unexpected("arg '" + from.name + "': file offset " + std::to_string(from.address) +
                                           " is not mapped");
                arg.address = *resolved;
            }
            if (from.root == FetchRoot::Symbol) {
                auto resolved = resolve_data_symbol(from.symbol);
                if (!resolved)
                    return std::unexpected("arg '" + from.name + "': symbol '" + from.symbol + "' not found");
                arg.address = *resolved + static_cast<std::uint64_t>(from.symbol_offset);
            }
            arg.derefs[reads++] = 0;
        }
        if (from.derefs.size() + reads > max_derefs)
            return std::unexpected("arg '" + from.name + "': too many dereferences (at most " +
                                   std::to_string(max_derefs) + ")");
        for (const Dereference& deref : from.derefs) arg.derefs[reads++] = deref.offset;
        arg.deref_count = static_cast<std::uint8_t>(reads);
        arg.reads_memory = reads != 0;
        arg.layout = field_layout(from);
        arg.register_scalar = from.root == FetchRoot::Register && reads == 0 && arg.layout == FieldLayout::Numbers &&
                              arg.kind != FetchType::Kind::Bitfield && arg.array_length == 0;
        arg.is_signed = arg.kind == FetchType::Kind::Signed;
        arg.width_bits = static_cast<std::uint8_t>(std::min(8u * arg.size, 64u));
        if (from.root == FetchRoot::StringImmediate) {
            std::size_t length = std::min<std::size_t>(from.string_value.size(), session.header().string_limit - 1);
            arg.string_value = from.string_value.data();
            arg.string_length = static_cast<std::uint16_t>(length);
        }
        switch (arg.layout) {
        case FieldLayout::Strings: size += std::size_t{arg.array_length} * (2 + session.header().string_limit); break;
        case FieldLayout::String: size += 2 + session.header().string_limit; break;
        case FieldLayout::Numbers: size += 8u * (arg.array_length == 0 ? 1u : std::min<unsigned>(arg.array_length, 64)); break;
        }
        if (from.name == hist_field) event.hist_field = static_cast<int>(i);
    }
    event.max_record = static_cast<std::uint32_t>((size + 7) & ~std::size_t{7});
    if (event.max_record > session.header().ring_bytes / 4)
        return std::unexpected("a record of this event could take " + std::to_string(event.max_record) +
                               " bytes, more than a quarter of a ring: use a larger --buffer-size or a smaller --string-size");
    return event;
}

}  // namespace ukp::tracer::agent
