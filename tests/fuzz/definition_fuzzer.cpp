// libFuzzer entry point for the definition parser (issue 5): any bytes must
// give a Definition or a DefinitionError, never a crash, a hang, undefined
// behaviour or an escaping exception.  On success the compiled filter is
// run over values made from the input; on failure the error is formatted.
//
// Beyond the sanitizers, it checks the promises callers rely on and, when
// one breaks, prints a one-line reproducer before aborting:
//   ukprobe-definition-fuzzer: <what broke>: "<the input, C-escaped>"
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "tracer/definition.hpp"

namespace {

[[noreturn]] void fail(const char* what, std::string_view input) {
    std::string escaped;
    for (const unsigned char c : input) {
        if (c == '"' || c == '\\') {
            escaped += '\\';
            escaped += static_cast<char>(c);
        } else if (c >= 0x20 && c < 0x7f) {
            escaped += static_cast<char>(c);
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            escaped += hex;
        }
    }
    std::fprintf(stderr, "ukprobe-definition-fuzzer: %s: \"%s\"\n", what, escaped.c_str());
    std::abort();
}

bool is_identifier(std::string_view name) {
    if (name.empty() || !(name[0] == '_' || ((name[0] | 0x20) >= 'a' && (name[0] | 0x20) <= 'z'))) {
        return false;
    }
    for (const char c : name) {
        const bool ok = c == '_' || (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
        if (!ok) {
            return false;
        }
    }
    return true;
}

void check_definition(const ukp::tracer::Definition& definition, std::string_view input) {
    using ukp::tracer::ProbeType;
    if (definition.command != input) {
        fail("command differs from the input", input);
    }
    if (!is_identifier(definition.event) || definition.event.size() > 63) {
        fail("event name is not a valid identifier of at most 63 bytes", input);
    }
    if (!definition.group.empty() && !is_identifier(definition.group)) {
        fail("group name is not an identifier", input);
    }
    if (definition.args.size() > 128) {
        fail("more than MAX_TRACE_ARGS args", input);
    }
    if (definition.type != ProbeType::Remove && definition.place.position >= input.size()) {
        fail("place position outside the command", input);
    }
    for (const auto& arg : definition.args) {
        if (arg.position >= input.size() || !is_identifier(arg.name)) {
            fail("arg position or name invalid", input);
        }
        if (arg.root == ukp::tracer::FetchRoot::Register &&
            arg.register_index >= ukp::tracer::register_names().size()) {
            fail("register index outside pt_regs", input);
        }
    }
    if (!definition.filter) {
        return;
    }
    // Values of every shape: numbers from the input's bytes, strings cut from
    // the input itself, and deliberately wrong kinds and missing fields.
    const auto& args = definition.args;
    std::vector<ukp::tracer::Filter::Value> values(args.size());
    for (int round = 0; round < 4; ++round) {
        for (std::size_t i = 0; i < values.size(); ++i) {
            auto& value = values[i];
            const std::size_t cut = input.empty() ? 0 : (i * 7 + static_cast<std::size_t>(round) * 13) % input.size();
            value.is_string = ((i + static_cast<std::size_t>(round)) % 3) == 0;
            value.string = input.substr(cut, static_cast<std::size_t>(round) * 5);
            value.number = round == 0 ? 0 : round == 1 ? ~std::uint64_t{0} : std::uint64_t{0x8000000000000000u} >> (i % 64);
        }
        const bool all = definition.filter->matches(values);
        const bool fewer = definition.filter->matches(std::span(values).first(values.size() / 2));
        (void)all;
        (void)fewer;
    }
    for (const unsigned field : definition.filter->fields_used()) {
        if (field >= args.size()) {
            fail("filter reads a field that does not exist", input);
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    const auto result = ukp::tracer::parse_definition(input);
    if (result) {
        check_definition(*result, input);
        if (result->place.glob) {
            (void)ukp::tracer::derive_event_name(result->type, result->place);
        }
        return 0;
    }
    const auto& error = result.error();
    if (error.position > input.size() || error.message.empty() || error.command != input) {
        fail("error position, message or command invalid", input);
    }
    const std::string shown = ukp::tracer::format_error(error);
    if (shown.find(error.message) == std::string::npos) {
        fail("format_error lost the message", input);
    }
    return 0;
}
