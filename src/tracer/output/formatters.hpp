// The three event formats as formatters: begin() once, event() per event,
// end() once, each appending to the writer's buffer.  One writer class
// (writer.cpp) drives any of them, so buffering, flushing and finishing
// exist once.  The formats themselves are described in tracer/output.hpp.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

#include <fmt/format.h>

#include "tracer/event.hpp"

namespace ukp::tracer::output {

class TextFormatter {
public:
    void begin(fmt::memory_buffer&) {}
    void event(fmt::memory_buffer& out, const DecodedEvent& event);
    void end(fmt::memory_buffer&) {}
};

class JsonLinesFormatter {
public:
    void begin(fmt::memory_buffer&) {}
    void event(fmt::memory_buffer& out, const DecodedEvent& event);
    void end(fmt::memory_buffer&) {}

private:
    fmt::memory_buffer faults_;  // reused: the names of this event's faulted fetches
};

class PerfettoFormatter {
public:
    void begin(fmt::memory_buffer& out);
    void event(fmt::memory_buffer& out, const DecodedEvent& event);
    void end(fmt::memory_buffer& out);

private:
    void start_record(fmt::memory_buffer& out);
    void name_thread_once(fmt::memory_buffer& out, const DecodedEvent& event);

    bool first_record_ = true;
    // Names already announced, so that metadata appears once per thread and
    // again only when the name changes (prctl(PR_SET_NAME) mid-run).
    // Threads are keyed by (pid, tid): a tid may be reused by another process.
    std::unordered_map<std::uint64_t, std::string> thread_names_;
    std::unordered_map<int, std::string> process_names_;
};

}  // namespace ukp::tracer::output
