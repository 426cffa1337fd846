// JSON Lines: one object per event, keys in a fixed order so that lines
// diff and grep well.  The value mapping (hex as strings, faults as null
// plus a "faults" list, U+FFFD for malformed UTF-8) is documented in
// tracer/output.hpp.
#include "tracer/output/format_helpers.hpp"
#include "tracer/output/formatters.hpp"

namespace ukp::tracer::output {

void JsonLinesFormatter::event(fmt::memory_buffer& out, const DecodedEvent& event) {
    append(out, "{\"ts_ns\":");
    append_decimal(out, event.timestamp_ns);
    append(out, ",\"pid\":");
    append_decimal(out, event.pid);
    append(out, ",\"tid\":");
    append_decimal(out, event.tid);
    append(out, ",\"cpu\":");
    append_decimal(out, event.cpu);
    append(out, ",\"comm\":");
    append_json_string(out, event.comm);
    append(out, ",\"group\":");
    append_json_string(out, event.group);
    append(out, ",\"event\":");
    append_json_string(out, event.event);
    append(out, event.is_return ? ",\"type\":\"return\",\"location\":" : ",\"type\":\"entry\",\"location\":");
    append_json_string(out, event.location);
    if (event.is_return) {
        append(out, ",\"entry_ts_ns\":");
        append_decimal(out, event.entry_timestamp_ns);
        append(out, ",\"duration_ns\":");
        // An entry stamped after its return (clock read on another CPU) is 0, not 2^64 - 1.
        append_decimal(out, event.timestamp_ns >= event.entry_timestamp_ns
                                ? event.timestamp_ns - event.entry_timestamp_ns
                                : std::uint64_t{0});
    }
    append(out, ",\"args\":");
    faults_.clear();
    append_json_args(out, event.fields, FaultStyle::Null, &faults_);
    if (faults_.size() != 0) {
        append(out, ",\"faults\":[");
        out.append(faults_.data(), faults_.data() + faults_.size());
        out.push_back(']');
    }
    append(out, "}\n");
}

}  // namespace ukp::tracer::output
