// Turns records read from the session's rings back into events: field
// values by the definition's types, names for addresses, thread names.
#pragma once

#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "tracer/cli/symbolizer.hpp"
#include "tracer/definition.hpp"
#include "tracer/event.hpp"
#include "tracer/session.hpp"

namespace ukp::tracer::cli {

class Decoder {
public:
    Decoder(const Session& session, const std::vector<Definition>& definitions)
        : session_(session), definitions_(definitions), symbolizer_(session) {}

    // The event is valid until the next call.  False for a record that does
    // not match its event's layout (never trusted blindly).
    [[nodiscard]] bool decode(const RecordHeader& header, std::span<const std::uint8_t> bytes, DecodedEvent* out);

    // A thread's name, from /proc while it lives; remembered afterwards.
    [[nodiscard]] const std::string& comm_of(int pid, int tid);
    // A name the agent saw, used when /proc no longer has the thread.
    void learn_comm(int tid, std::string_view name);
    // Call while the program runs, so names outlive the threads.
    void remember_threads(int pid);

private:
    const Session& session_;
    const std::vector<Definition>& definitions_;
    Symbolizer symbolizer_;
    std::unordered_map<int, std::string> comms_;
    std::string location_;
    std::unordered_map<int, std::string> learned_;
};

}  // namespace ukp::tracer::cli
