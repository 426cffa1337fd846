// parse_definition: one kprobe_events/uprobe_events line, read as
// kernel/trace/trace_kprobe.c and trace_uprobe.c read theirs.
//
// Facts this file relies on:
//  - The kernel splits a command at whitespace (argv_split, no quoting):
//    argv[0] is the type with its optional maxactive and [GRP/]EVENT,
//    argv[1] the place, the rest fetch args.  We split the same way with
//    one extension: a \"...\" immediate string runs to its closing quote, so
//    it may hold spaces (and the word "if").  Without a closing quote it
//    ends at whitespace, as the kernel's would.
//  - `if` as a whole word after the place starts the filter (as the
//    kernel's eprobes read it); everything after it is the filter.
//  - The kernel checks, in this order: maxactive, the place, the event
//    name, $arg*, the number of args, then each arg.  The first error wins,
//    so we keep the order.
//  - Places.  A number (kstrtoul, base 0) is an address.  With a ':', the
//    part before is a file: split at the last ':' when that part holds a
//    '/' (a path; uprobe_events does the same), else at the first (a
//    module such as libc.so.6).  After the ':' a digit starts a file
//    offset read as uprobe_events reads it: OFFSET[%return][(REF_CTR)];
//    anything else is a symbol read as kprobe_events reads one:
//    SYM[+|-OFFS][%return] (a negative or >4 GiB offset is refused).
//  - Event names left out are made as the kernel makes them: kprobes
//    "p_SYM_OFFS"/"r_SYM_OFFS" (decimal offset, ':' and '.' turned into
//    '_'), uprobes "p_STEM_0xOFFS" where STEM is the file's basename cut at
//    its first '.', '-' or '_' ('p' even for return probes, as the kernel
//    does).  Longer than 63 bytes, they are cut (the kernel's snprintf).
//    We turn every non-identifier byte into '_' (user symbols may hold
//    '@', '$', or glob characters), and name addresses "p_0xADDR" where
//    the kernel prints a hashed pointer.
#include <exception>
#include <string>

#include "tracer/definition/internal.hpp"

namespace ukp::tracer {

namespace detail = definition_detail;
using detail::Code;
using detail::ErrorAt;
using detail::Failure;

namespace {

struct Token {
    std::string_view text;
    std::size_t position;
};

struct Split {
    std::vector<Token> tokens;
    bool has_filter = false;
    std::size_t if_position = 0;
    std::string_view filter;
    std::size_t filter_position = 0;
};

Split split_command(std::string_view command) {
    Split split;
    std::size_t at = 0;
    while (at < command.size()) {
        while (at < command.size() && detail::is_space(command[at])) {
            ++at;
        }
        if (at == command.size()) {
            break;
        }
        const std::size_t start = at;
        while (at < command.size() && !detail::is_space(command[at])) {
            if (command[at] == '\\' && at + 1 < command.size() && command[at + 1] == '"') {
                const auto close = command.find('"', at + 2);
                if (close != std::string_view::npos) {
                    at = close + 1;
                    continue;
                }
            }
            ++at;
        }
        const Token token{command.substr(start, at - start), start};
        if (split.tokens.size() >= 2 && token.text == "if") {
            split.has_filter = true;
            split.if_position = start;
            while (at < command.size() && detail::is_space(command[at])) {
                ++at;
            }
            split.filter = command.substr(at);
            split.filter_position = at;
            break;
        }
        split.tokens.push_back(token);
    }
    return split;
}

// traceprobe_parse_event_name(): [GROUP/]EVENT or GROUP.EVENT.  An empty
// EVENT after a group means "derive it" unless `event_required`.
Failure parse_event_name(std::string_view text, std::size_t position, bool event_required, Definition& definition) {
    auto slash = text.find('/');
    if (slash == std::string_view::npos) {
        slash = text.find('.');
    }
    if (slash != std::string_view::npos) {
        if (slash == 0) {
            return ErrorAt{Code::NoGroupName, position};
        }
        if (slash + 1 > detail::max_event_name_len) {
            return ErrorAt{Code::GroupTooLong, position};
        }
        const std::string_view group = text.substr(0, slash);
        if (!detail::is_good_name(group)) {
            return ErrorAt{Code::BadGroupName, position};
        }
        definition.group = std::string(group);
        position += slash + 1;
        text.remove_prefix(slash + 1);
    }
    if (text.empty()) {
        if (slash != std::string_view::npos && !event_required) {
            return std::nullopt;
        }
        return ErrorAt{Code::NoEventName, position};
    }
    if (text.size() >= detail::max_event_name_len) {
        return ErrorAt{Code::EventTooLong, position};
    }
    if (!detail::is_good_name(text)) {
        return ErrorAt{Code::BadEventName, position};
    }
    definition.event = std::string(text);
    definition.event_given = true;
    return std::nullopt;
}

// Symbols as ELF tables spell them (C++ names mangled), plus glob
// characters; a leading digit would have been an address.
bool is_symbol_pattern(std::string_view symbol) noexcept {
    constexpr std::size_t max_symbol_length = 4096;
    if (symbol.empty() || symbol.size() > max_symbol_length || detail::is_digit(symbol[0])) {
        return false;
    }
    for (const char c : symbol) {
        const bool ok = detail::is_alnum(c) || c == '_' || c == '.' || c == '$' || c == '@' || c == '*' ||
                        c == '?' || c == '[' || c == ']' || c == '!' || c == '^';
        if (!ok) {
            return false;
        }
    }
    return true;
}

// "%return" or nothing; anything else after '%' is a bad suffix.
Failure take_return_suffix(std::string_view& text, std::size_t position, Definition& definition) {
    const auto percent = text.find('%');
    if (percent == std::string_view::npos) {
        return std::nullopt;
    }
    if (text.substr(percent) != "%return") {
        return ErrorAt{Code::BadAddrSuffix, position + percent};
    }
    text = text.substr(0, percent);
    definition.type = ProbeType::Return;
    return std::nullopt;
}

// SYM[+|-OFFS][%return], `module` already split off.  `symbol_at` is
// where SYM starts inside the place; errors point at the place's start,
// as the kernel's do.
Failure parse_symbol_place(const Token& place_token, std::size_t symbol_at, Definition& definition) {
    Place& place = definition.place;
    std::string_view text = place_token.text.substr(symbol_at);
    if (const auto failure = take_return_suffix(text, place_token.position + symbol_at, definition)) {
        return failure;
    }
    if (place.module.empty()) {
        if (const auto address = detail::parse_unsigned(text)) {
            place.form = Place::Form::Address;
            place.address = *address;
            return std::nullopt;
        }
    }
    const auto split = text.find_first_of("+-");
    const std::string_view symbol = text.substr(0, split);
    if (split != std::string_view::npos) {
        const auto offset = detail::parse_signed(text.substr(split));
        if (!offset || *offset < 0 || *offset > 0xffffffffll) {
            return ErrorAt{Code::BadProbeAddr, place_token.position};
        }
        place.offset = static_cast<std::uint64_t>(*offset);
    }
    if (!is_symbol_pattern(symbol)) {
        return ErrorAt{Code::BadProbeAddr, place_token.position};
    }
    place.form = Place::Form::Symbol;
    place.symbol = std::string(symbol);
    place.glob = symbol.find_first_of("*?[") != std::string_view::npos;
    // A return probe hooks the function's entry to find its return address.
    if (definition.type == ProbeType::Return && place.offset != 0) {
        return ErrorAt{Code::BadRetprobe, place_token.position};
    }
    return std::nullopt;
}

// OFFSET[%return][(REF_CTR_OFFSET)], the uprobe form; `offset_at` is where
// OFFSET starts inside the place.  Positions as trace_uprobe.c reports them.
Failure parse_file_offset_place(const Token& place_token, std::size_t offset_at, Definition& definition) {
    Place& place = definition.place;
    const std::size_t base = place_token.position + offset_at;
    std::string_view text = place_token.text.substr(offset_at);
    const auto open = text.find('(');
    if (open != std::string_view::npos) {
        const auto close = text.find(')', open);
        if (close == std::string_view::npos) {
            return ErrorAt{Code::RefcntOpenBrace, base + text.size()};
        }
        if (close + 1 != text.size()) {
            return ErrorAt{Code::BadRefcntSuffix, base + close + 1};
        }
        const auto counter = detail::parse_unsigned(text.substr(open + 1, close - open - 1));
        if (!counter) {
            return ErrorAt{Code::BadRefcnt, base + open + 1};
        }
        place.reference_counter_offset = *counter;
        text = text.substr(0, open);
    }
    if (const auto failure = take_return_suffix(text, base, definition)) {
        return failure;
    }
    const auto offset = detail::parse_unsigned(text);
    if (!offset) {
        return ErrorAt{Code::BadUprobeOffs, base};
    }
    place.form = Place::Form::FileOffset;
    place.offset = *offset;
    return std::nullopt;
}

Failure parse_place(const Token& token, Definition& definition) {
    Place& place = definition.place;
    place.position = token.position;
    const std::string_view text = token.text;
    if (const auto address = detail::parse_unsigned(text)) {
        place.form = Place::Form::Address;
        place.address = *address;
        return std::nullopt;
    }
    const auto first_colon = text.find(':');
    if (first_colon == std::string_view::npos) {
        return parse_symbol_place(token, 0, definition);
    }
    const auto last_colon = text.rfind(':');
    const bool is_path = text.substr(0, last_colon).find('/') != std::string_view::npos;
    const auto colon = is_path ? last_colon : first_colon;
    if (colon == 0) {
        return ErrorAt{Code::BadProbeAddr, token.position};
    }
    place.module = std::string(text.substr(0, colon));
    if (colon + 1 < text.size() && detail::is_digit(text[colon + 1])) {
        return parse_file_offset_place(token, colon + 1, definition);
    }
    return parse_symbol_place(token, colon + 1, definition);
}

// Before any arg is parsed the kernel looks at every arg spelled "$arg...":
// they need a function entry or exit, and $arg* (all args, from BTF) may
// appear once.  We have no BTF, so a valid $arg* is then refused.
Failure check_meta_args(std::span<const Token> args, const detail::ArgContext& context) {
    std::optional<std::size_t> all_args_at;
    for (const auto& token : args) {
        if (!token.text.starts_with("$arg")) {
            continue;
        }
        if (!context.at_function_entry && !context.is_return) {
            return ErrorAt{Code::NofentryArgs, token.position};
        }
        if (token.text.size() > 4 && detail::is_digit(token.text[4])) {
            continue;
        }
        if (token.text.size() == 4 || token.text[4] != '*') {
            return ErrorAt{Code::BadVar, token.position};
        }
        if (all_args_at) {
            return ErrorAt{Code::DoubleArgs, token.position};
        }
        all_args_at = token.position;
    }
    if (all_args_at) {
        return ErrorAt{Code::NosupBtfarg, *all_args_at};
    }
    return std::nullopt;
}

std::string file_stem(std::string_view path) {
    const auto slash = path.rfind('/');
    std::string_view base = slash == std::string_view::npos ? path : path.substr(slash + 1);
    return std::string(base.substr(0, base.find_first_of(".-_")));
}

std::string to_hex(std::uint64_t value) {
    constexpr char digits[] = "0123456789abcdef";
    std::string text;
    do {
        text.insert(text.begin(), digits[value & 0xf]);
        value >>= 4;
    } while (value != 0);
    return "0x" + text;
}

std::expected<Definition, ErrorAt> parse(std::string_view command) {
    Definition definition;
    definition.command = std::string(command);
    Split split = split_command(command);
    if (split.tokens.empty()) {
        return std::unexpected(ErrorAt{Code::EmptyDefinition, command.size()});
    }

    // 1. The probe type, maxactive, and where [GRP/]EVENT starts.
    const Token head = split.tokens[0];
    switch (head.text[0]) {
    case 'p':
        definition.type = ProbeType::Entry;
        break;
    case 'r':
        definition.type = ProbeType::Return;
        break;
    case '-':
        definition.type = ProbeType::Remove;
        break;
    default:
        return std::unexpected(ErrorAt{Code::BadProbeType, head.position});
    }
    if (definition.type == ProbeType::Remove) {
        if (head.text.size() < 2 || head.text[1] != ':') {
            return std::unexpected(ErrorAt{Code::BadProbeType, head.position + 1});
        }
        if (const auto failure = parse_event_name(head.text.substr(2), head.position + 2, true, definition)) {
            return std::unexpected(*failure);
        }
        if (split.tokens.size() > 1 || split.has_filter) {
            return std::unexpected(ErrorAt{Code::RemoveTakesEventOnly,
                                           split.tokens.size() > 1 ? split.tokens[1].position : split.if_position});
        }
        return definition;
    }
    if (split.tokens.size() < 2) {
        return std::unexpected(ErrorAt{Code::NoProbePoint, head.position + head.text.size()});
    }
    const std::string_view after_type = head.text.substr(1);
    const auto event_colon = after_type.find(':');
    const std::string_view maxactive = after_type.substr(0, event_colon);
    if (!maxactive.empty()) {
        if (!detail::is_digit(maxactive[0])) {
            return std::unexpected(ErrorAt{Code::BadProbeType, head.position + 1});
        }
        if (definition.type != ProbeType::Return) {
            return std::unexpected(ErrorAt{Code::BadMaxactType, head.position + 1});
        }
        const auto value = maxactive.size() < detail::max_event_name_len ? detail::parse_unsigned(maxactive)
                                                                         : std::nullopt;
        if (!value || *value == 0 || *value > 0xffffffffu) {
            return std::unexpected(ErrorAt{Code::BadMaxact, head.position + 1});
        }
        if (*value > detail::max_maxactive) {
            return std::unexpected(ErrorAt{Code::MaxactTooBig, head.position + 1});
        }
        definition.maxactive = static_cast<int>(*value);
    }

    // 2. The place.
    if (const auto failure = parse_place(split.tokens[1], definition)) {
        return std::unexpected(*failure);
    }
    const Place& place = definition.place;

    // 3. [GRP/][EVENT], or the kernel's derived name.
    if (event_colon != std::string_view::npos) {
        const std::size_t event_at = head.position + 1 + event_colon + 1;
        if (const auto failure =
                parse_event_name(after_type.substr(event_colon + 1), event_at, false, definition)) {
            return std::unexpected(*failure);
        }
        // One event per matched function needs one name per match.
        if (place.glob && definition.event_given) {
            const std::size_t name_at = event_at + (definition.group.empty() ? 0 : definition.group.size() + 1);
            return std::unexpected(ErrorAt{Code::GlobWithEvent, name_at});
        }
    }
    if (!definition.event_given) {
        definition.event = derive_event_name(definition.type, place);
    }

    // 4. The fetch args.
    detail::ArgContext context;
    context.is_return = definition.type == ProbeType::Return;
    context.at_function_entry = place.form != Place::Form::Symbol || place.offset == 0;
    context.has_file = place.form == Place::Form::FileOffset || !place.module.empty();
    const auto arg_tokens = std::span<const Token>(split.tokens).subspan(2);
    if (const auto failure = check_meta_args(arg_tokens, context)) {
        return std::unexpected(*failure);
    }
    if (arg_tokens.size() > detail::max_trace_args) {
        return std::unexpected(ErrorAt{Code::TooManyArgs, arg_tokens.front().position});
    }
    std::size_t event_size = 0;
    for (std::size_t i = 0; i < arg_tokens.size(); ++i) {
        auto arg = detail::parse_fetch_arg(arg_tokens[i].text, arg_tokens[i].position, static_cast<unsigned>(i),
                                           context, definition.args, event_size);
        if (!arg) {
            return std::unexpected(arg.error());
        }
        definition.args.push_back(std::move(*arg));
    }

    // 5. The filter.
    if (split.has_filter) {
        if (split.filter.empty()) {
            return std::unexpected(ErrorAt{Code::NoEpFilter, split.filter_position});
        }
        auto filter = detail::parse_filter(split.filter, split.filter_position, definition.args);
        if (!filter) {
            return std::unexpected(filter.error());
        }
        definition.filter = std::move(*filter);
    }
    return definition;
}

}  // namespace

std::string derive_event_name(ProbeType type, const Place& place) {
    const char kind = type == ProbeType::Return ? 'r' : 'p';
    std::string name(1, kind);
    switch (place.form) {
    case Place::Form::Address:
        name += "_" + to_hex(place.address);
        break;
    case Place::Form::FileOffset:
        // trace_uprobe.c writes 'p' whatever the probe type.
        name = "p_" + file_stem(place.module) + "_" + to_hex(place.offset);
        break;
    case Place::Form::Symbol: {
        name += '_';
        if (place.module.find('/') != std::string::npos) {
            name += file_stem(place.module) + "_";
        } else if (!place.module.empty()) {
            name += place.module + ":";
        }
        name += place.symbol + "_" + std::to_string(place.offset);
        break;
    }
    }
    for (char& c : name) {
        if (!(detail::is_alnum(c) || c == '_')) {
            c = '_';
        }
    }
    if (name.size() >= detail::max_event_name_len) {
        name.resize(detail::max_event_name_len - 1);
    }
    return name;
}

std::expected<Definition, DefinitionError> parse_definition(std::string_view command) {
    // Nothing below throws but std::bad_alloc (std::length_error at worst);
    // a parser that may run in the traced program reports even those as
    // values.
    try {
        auto definition = parse(command);
        if (definition) {
            return std::move(*definition);
        }
        const ErrorAt error = definition.error();
        return std::unexpected(
            DefinitionError{std::string(detail::message_of(error.code)), error.position, std::string(command)});
    } catch (const std::exception&) {
        return std::unexpected(DefinitionError{"Out of memory", 0, std::string{}});
    }
}

}  // namespace ukp::tracer
