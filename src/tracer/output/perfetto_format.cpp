// The Chrome Trace Event Format (JSON Object form) as ui.perfetto.dev and
// chrome://tracing read it.  Facts from the format's specification:
// - "ts" and "dur" are microseconds and may be fractional; we write three
//   decimals, exact nanoseconds.
// - "ph":"i" is an instant event; "s":"t" scopes it to its thread, drawn on
//   the thread's track.  "ph":"X" is a complete event: a slice from "ts"
//   lasting "dur".
// - "ph":"M" metadata named "process_name" / "thread_name" with
//   args {"name": ...} names the pid / tid tracks.
// - displayTimeUnit "ns" makes the viewer show nanoseconds.
// - In the Object form the document must be closed to be read at all, so
//   traceEvents is the last key: closing is "]}" and nothing else.
// One record per line, so the file is also readable with line tools.
#include "tracer/output/format_helpers.hpp"
#include "tracer/output/formatters.hpp"

namespace ukp::tracer::output {

namespace {

std::uint64_t thread_key(const DecodedEvent& event) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(event.pid)) << 32) |
           static_cast<std::uint32_t>(event.tid);
}

void append_name_metadata(fmt::memory_buffer& out, std::string_view what, int pid, int tid,
                          std::string_view name) {
    append(out, "{\"ph\":\"M\",\"name\":\"");
    append(out, what);
    append(out, "\",\"pid\":");
    append_decimal(out, pid);
    append(out, ",\"tid\":");
    append_decimal(out, tid);
    append(out, ",\"args\":{\"name\":");
    append_json_string(out, name);
    append(out, "}}");
}

}  // namespace

void PerfettoFormatter::begin(fmt::memory_buffer& out) {
    append(out, "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"producer\":\"ukprobe\"},\"traceEvents\":[\n");
}

void PerfettoFormatter::start_record(fmt::memory_buffer& out) {
    if (!first_record_) {
        append(out, ",\n");
    }
    first_record_ = false;
}

void PerfettoFormatter::name_thread_once(fmt::memory_buffer& out, const DecodedEvent& event) {
    if (event.tid == event.pid) {
        auto [process, inserted] = process_names_.try_emplace(event.pid);
        if (inserted || process->second != event.comm) {
            process->second.assign(event.comm);
            start_record(out);
            append_name_metadata(out, "process_name", event.pid, event.pid, event.comm);
        }
    }
    auto [thread, inserted] = thread_names_.try_emplace(thread_key(event));
    if (inserted || thread->second != event.comm) {
        thread->second.assign(event.comm);
        start_record(out);
        append_name_metadata(out, "thread_name", event.pid, event.tid, event.comm);
    }
}

void PerfettoFormatter::event(fmt::memory_buffer& out, const DecodedEvent& event) {
    name_thread_once(out, event);
    start_record(out);
    if (event.is_return) {
        const std::uint64_t start = event.entry_timestamp_ns <= event.timestamp_ns ? event.entry_timestamp_ns
                                                                                   : event.timestamp_ns;
        append(out, "{\"ph\":\"X\",\"name\":");
        append_json_string(out, event.event);
        append(out, ",\"cat\":");
        append_json_string(out, event.group);
        append(out, ",\"ts\":");
        append_microseconds(out, start);
        append(out, ",\"dur\":");
        append_microseconds(out, event.timestamp_ns - start);
    } else {
        append(out, "{\"ph\":\"i\",\"s\":\"t\",\"name\":");
        append_json_string(out, event.event);
        append(out, ",\"cat\":");
        append_json_string(out, event.group);
        append(out, ",\"ts\":");
        append_microseconds(out, event.timestamp_ns);
    }
    append(out, ",\"pid\":");
    append_decimal(out, event.pid);
    append(out, ",\"tid\":");
    append_decimal(out, event.tid);
    append(out, ",\"args\":");
    append_json_args(out, event.fields, FaultStyle::FaultText, nullptr);
    out.push_back('}');
}

void PerfettoFormatter::end(fmt::memory_buffer& out) { append(out, "\n]}\n"); }

}  // namespace ukp::tracer::output
