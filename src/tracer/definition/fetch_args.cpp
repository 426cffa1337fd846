// Fetch args: [NAME=]FETCHARG[:TYPE], as kernel/trace/trace_probe.c reads
// them, with the same errors at the same caret positions.
//
// Facts this file relies on:
//  - The kernel compiles a fetch arg into at most FETCH_INSN_MAX (16)
//    instructions, the last one reserved for "end": one to load the root
//    (two for @ADDR: address then load; three for @SYM: symbol, address,
//    load), one per +OFFS(...) dereference, and then a store that either
//    turns the last dereference into "store from memory" (no new slot) or
//    takes one more slot; a bitfield and an array loop each take one more.
//    Running out is "Dereference is too much nested" (or, for the bitfield
//    slot, "Invalid bitfield").  We count slots the same way so that the
//    same definitions are accepted; the counts are in `Slots`.
//  - A dereference's inner argument ends at the LAST ')' of what remains
//    (strrchr), which is what makes "+0(+0(@0)" report the missing brace
//    after "@0".  The kernel silently ignores bytes after that ')'; we
//    reject them ("Invalid fetch argument") because they are always a typo.
//  - The type is split at the first ':'.  For an immediate string we look
//    for that ':' only after its closing quote, so that \"a:b" works (the
//    kernel would cut the string at the ':').
//  - For string/ustring, the last dereference is not a load: the string
//    starts where that load would have read (+0(%di):string is the string
//    at %di).  symstr keeps the load: it names the loaded address.
//  - Error positions are the kernel's: name errors at the arg's start, body
//    errors at the body's start, each dereference's errors at the start of
//    its inner argument.  The kernel drops one byte for "+u" dereferences;
//    we point at the real inner argument there.
#include <array>
#include <string>

#include "tracer/definition/internal.hpp"

namespace ukp::tracer {

namespace {

// pt_regs order; see include/ukprobes/pt_regs.h.
constexpr std::array<std::string_view, 21> pt_regs_names{
    "r15", "r14", "r13", "r12", "bp", "bx",      "r11", "r10", "r9", "r8", "ax",
    "cx",  "dx",  "si",  "di",  "orig_ax", "ip", "cs",  "flags", "sp", "ss",
};

// The 64-bit names users type from the disassembly, as aliases (ours).
struct RegisterAlias {
    std::string_view alias;
    std::string_view name;
};
constexpr std::array<RegisterAlias, 11> register_aliases{{
    {"rax", "ax"},
    {"rbx", "bx"},
    {"rcx", "cx"},
    {"rdx", "dx"},
    {"rsi", "si"},
    {"rdi", "di"},
    {"rbp", "bp"},
    {"rsp", "sp"},
    {"rip", "ip"},
    {"eflags", "flags"},
    {"rflags", "flags"},
}};

}  // namespace

std::span<const std::string_view> register_names() { return pt_regs_names; }

namespace definition_detail {

namespace {

std::optional<unsigned> find_register(std::string_view name) noexcept {
    for (const auto& alias : register_aliases) {
        if (alias.alias == name) {
            name = alias.name;
            break;
        }
    }
    for (unsigned i = 0; i < pt_regs_names.size(); ++i) {
        if (pt_regs_names[i] == name) {
            return i;
        }
    }
    return std::nullopt;
}

// The kernel's last fetch instruction before the store; what the store and
// the type checks look at.
enum class LastOp { Register, Stack, StackPointer, ReturnValue, Immediate, Comm, Argument, FileOffset, Data, Deref, UserDeref };

// The instruction slots a fetch arg may use: FETCH_INSN_MAX minus the end
// marker.  A new slot at index `usable_slots` is one too many.
constexpr unsigned usable_slots = max_fetch_insns - 1;

struct ArgParse {
    const ArgContext& context;
    FetchArg& arg;
    unsigned slots = 0;  // instruction slots used so far
    LastOp last = LastOp::Register;
    // The kernel's ctx->offset after parsing: where late errors point.
    std::size_t late_position = 0;
};

// Takes one more instruction slot, as "if (++code == end)" does.
bool take_slot(ArgParse& parse) noexcept {
    if (parse.slots >= usable_slots) {
        return false;
    }
    ++parse.slots;
    return true;
}

Failure parse_root(std::string_view text, std::size_t position, ArgParse& parse);

Failure parse_variable(std::string_view text, std::size_t position, ArgParse& parse) {
    FetchArg& arg = parse.arg;
    const std::string_view name = text.substr(1);
    parse.slots = 1;
    if (name == "retval") {
        if (!parse.context.is_return) {
            return ErrorAt{Code::RetvalOnProbe, position};
        }
        arg.root = FetchRoot::ReturnValue;
        parse.last = LastOp::ReturnValue;
        return std::nullopt;
    }
    if (name.starts_with("stack")) {
        const std::string_view number = name.substr(5);
        if (number.empty()) {
            arg.root = FetchRoot::StackPointer;
            parse.last = LastOp::StackPointer;
            return std::nullopt;
        }
        if (!is_digit(number[0])) {
            return ErrorAt{Code::BadVar, position};
        }
        const auto index = parse_decimal(number);
        if (!index) {
            return ErrorAt{Code::BadVar, position};
        }
        // The kernel bounds $stackN by the kernel stack only; a user stack
        // has no such bound, but the slot's byte offset must stay a 32-bit
        // value for the fetch code.
        if (*index > 0x1fffffffu) {
            return ErrorAt{Code::BadStackNum, position};
        }
        arg.root = FetchRoot::StackEntry;
        arg.index = static_cast<unsigned>(*index);
        parse.last = LastOp::Stack;
        return std::nullopt;
    }
    if (name == "comm" || name == "COMM") {
        arg.root = FetchRoot::Comm;
        parse.last = LastOp::Comm;
        return std::nullopt;
    }
    if (name.starts_with("arg")) {
        const std::string_view number = name.substr(3);
        if (number == "*") {
            // A bare $arg* was handled before any arg was parsed; here it
            // has a name or sits inside a dereference.
            return ErrorAt{Code::BadVarArgs, position};
        }
        const auto index = parse_decimal(number);
        if (!index) {
            return ErrorAt{Code::BadVar, position};
        }
        if (*index == 0 || *index > max_argument_number) {
            return ErrorAt{Code::BadArgNum, position};
        }
        if (!parse.context.at_function_entry && !parse.context.is_return) {
            return ErrorAt{Code::NofentryArgs, position};
        }
        arg.root = FetchRoot::Argument;
        arg.index = static_cast<unsigned>(*index);
        parse.last = LastOp::Argument;
        return std::nullopt;
    }
    return ErrorAt{Code::BadVar, position};
}

// A data symbol: [A-Za-z_.$][A-Za-z0-9_.$@]*, as ELF symbol tables spell them.
bool is_symbol_name(std::string_view name) noexcept {
    if (name.empty() || is_digit(name[0]) || name[0] == '@') {
        return false;
    }
    for (const char c : name) {
        if (!(is_alnum(c) || c == '_' || c == '.' || c == '$' || c == '@')) {
            return false;
        }
    }
    return true;
}

Failure parse_memory(std::string_view text, std::size_t position, ArgParse& parse) {
    FetchArg& arg = parse.arg;
    const std::string_view rest = text.substr(1);
    if (!rest.empty() && is_digit(rest[0])) {
        const auto address = parse_unsigned(rest);
        if (!address) {
            return ErrorAt{Code::BadMemAddr, position};
        }
        arg.root = FetchRoot::Memory;
        arg.address = *address;
        parse.slots = 2;  // load the address, then read memory there
    } else if (!rest.empty() && rest[0] == '+') {
        if (!parse.context.has_file) {
            return ErrorAt{Code::FileOnKprobe, position};
        }
        const auto offset = parse_signed(rest.substr(1));
        // A negative file offset names nothing; the kernel would take it.
        if (!offset || *offset < 0) {
            return ErrorAt{Code::BadFileOffs, position};
        }
        arg.root = FetchRoot::FileOffset;
        arg.address = static_cast<std::uint64_t>(*offset);
        parse.slots = 2;
    } else {
        // The kernel refuses @SYM in uprobes (it cannot look up user
        // symbols); ukprobe can, so it takes @SYM everywhere.
        const auto split = rest.find_first_of("+-");
        const std::string_view symbol = rest.substr(0, split);
        std::int64_t offset = 0;
        if (split != std::string_view::npos) {
            const auto parsed = parse_signed(rest.substr(split));
            if (!parsed) {
                return ErrorAt{Code::BadMemAddr, position};
            }
            offset = *parsed;
        }
        if (!is_symbol_name(symbol)) {
            return ErrorAt{Code::BadMemAddr, position};
        }
        arg.root = FetchRoot::Symbol;
        arg.symbol = std::string(symbol);
        arg.symbol_offset = offset;
        parse.slots = 3;  // symbol placeholder, its address, read memory
    }
    parse.last = LastOp::Deref;
    return std::nullopt;
}

Failure parse_dereference(std::string_view text, std::size_t position, ArgParse& parse) {
    const char sign = text[0];
    const bool user = text.size() > 1 && text[1] == 'u';
    const std::size_t digits_start = user ? 2 : 1;
    const auto open = text.find('(', digits_start);
    if (open == std::string_view::npos) {
        return ErrorAt{Code::DerefNeedBrace, position};
    }
    // "+OFFS" reads OFFS as kstrtol does (so "+-8(" is -8); "-OFFS" is negative.
    std::string number;
    if (sign == '-') {
        number.push_back('-');
    }
    number.append(text.substr(digits_start, open - digits_start));
    const auto offset = parse_signed(number);
    if (!offset) {
        return ErrorAt{Code::BadDerefOffs, position};
    }
    const std::size_t inner_position = position + open + 1;
    const std::string_view rest = text.substr(open + 1);
    const auto close = rest.rfind(')');
    if (close == std::string_view::npos) {
        return ErrorAt{Code::DerefOpenBrace, inner_position + rest.size()};
    }
    if (close + 1 != rest.size()) {
        return ErrorAt{Code::BadFetchArg, inner_position + close + 1};
    }
    if (const auto failure = parse_root(rest.substr(0, close), inner_position, parse)) {
        return failure;
    }
    parse.late_position = inner_position;
    if (parse.last == LastOp::Comm || parse.last == LastOp::Data) {
        return ErrorAt{Code::CommCantDeref, inner_position};
    }
    if (!take_slot(parse)) {
        return ErrorAt{Code::TooManyOps, inner_position};
    }
    parse.arg.derefs.push_back(Dereference{*offset, user});
    parse.last = user ? LastOp::UserDeref : LastOp::Deref;
    return std::nullopt;
}

Failure parse_immediate(std::string_view text, std::size_t position, ArgParse& parse) {
    FetchArg& arg = parse.arg;
    parse.slots = 1;
    if (text.size() > 1 && text[1] == '"') {
        const std::string_view body = text.substr(2);
        if (body.empty() || body.back() != '"') {
            return ErrorAt{Code::ImmstrNoClose, position + 2 + body.size()};
        }
        arg.root = FetchRoot::StringImmediate;
        arg.string_value = std::string(body.substr(0, body.size() - 1));
        parse.last = LastOp::Data;
        return std::nullopt;
    }
    const std::string_view number = text.substr(1);
    std::optional<std::uint64_t> value;
    if (!number.empty() && is_digit(number[0])) {
        value = parse_unsigned(number);
    } else if (!number.empty() && (number[0] == '-' || number[0] == '+')) {
        const auto signed_value = parse_signed(number[0] == '+' ? number.substr(1) : number);
        if (signed_value) {
            value = static_cast<std::uint64_t>(*signed_value);
        }
    }
    if (!value) {
        return ErrorAt{Code::BadImm, position + 1};
    }
    arg.root = FetchRoot::Immediate;
    arg.address = *value;
    parse.last = LastOp::Immediate;
    return std::nullopt;
}

Failure parse_root(std::string_view text, std::size_t position, ArgParse& parse) {
    if (text.empty()) {
        return ErrorAt{Code::BadFetchArg, position};
    }
    switch (text[0]) {
    case '$':
        return parse_variable(text, position, parse);
    case '%': {
        const auto index = find_register(text.substr(1));
        if (!index) {
            return ErrorAt{Code::BadRegName, position};
        }
        parse.arg.root = FetchRoot::Register;
        parse.arg.register_index = *index;
        parse.slots = 1;
        parse.last = LastOp::Register;
        return std::nullopt;
    }
    case '@':
        return parse_memory(text, position, parse);
    case '+':
    case '-':
        return parse_dereference(text, position, parse);
    case '\\':
        return parse_immediate(text, position, parse);
    default:
        // A bare name is a BTF variable to the kernel; we have no type
        // information for user programs.
        if (is_alpha(text[0]) || text[0] == '_') {
            return ErrorAt{Code::NosupBtfarg, position};
        }
        return ErrorAt{Code::BadFetchArg, position};
    }
}

struct TypeName {
    std::string_view name;
    FetchType::Kind kind;
    unsigned size;
};
constexpr std::array<TypeName, 17> type_names{{
    {"u8", FetchType::Kind::Unsigned, 1},      {"u16", FetchType::Kind::Unsigned, 2},
    {"u32", FetchType::Kind::Unsigned, 4},     {"u64", FetchType::Kind::Unsigned, 8},
    {"s8", FetchType::Kind::Signed, 1},        {"s16", FetchType::Kind::Signed, 2},
    {"s32", FetchType::Kind::Signed, 4},       {"s64", FetchType::Kind::Signed, 8},
    {"x8", FetchType::Kind::Hex, 1},           {"x16", FetchType::Kind::Hex, 2},
    {"x32", FetchType::Kind::Hex, 4},          {"x64", FetchType::Kind::Hex, 8},
    {"char", FetchType::Kind::Char, 1},        {"string", FetchType::Kind::String, 0},
    {"ustring", FetchType::Kind::UString, 0},  {"symstr", FetchType::Kind::SymbolString, 0},
    {"symbol", FetchType::Kind::SymbolAddress, 8},
}};

// find_fetch_type(): a known name, or b<...>/<8|16|32|64> whose container
// alone is checked here (the width and offset are checked with the store).
std::optional<FetchType> find_type(std::string_view name) noexcept {
    if (!name.empty() && name[0] == 'b') {
        const auto slash = name.find('/');
        if (slash == std::string_view::npos) {
            return std::nullopt;
        }
        const auto bits = parse_unsigned(name.substr(slash + 1));
        if (!bits || (*bits != 8 && *bits != 16 && *bits != 32 && *bits != 64)) {
            return std::nullopt;
        }
        FetchType type;
        type.kind = FetchType::Kind::Bitfield;
        type.size = static_cast<unsigned>(*bits / 8);
        return type;
    }
    for (const auto& known : type_names) {
        if (known.name == name) {
            FetchType type;
            type.kind = known.kind;
            type.size = known.size;
            return type;
        }
    }
    return std::nullopt;
}

bool is_string_kind(FetchType::Kind kind) noexcept {
    return kind == FetchType::Kind::String || kind == FetchType::Kind::UString ||
           kind == FetchType::Kind::SymbolString;
}

// b<width>@<offset>/<container>, read with simple_strtoul as the kernel does.
bool parse_bitfield(std::string_view name, FetchType& type) noexcept {
    const auto width = parse_unsigned_prefix(name.substr(1));
    if (!width || width->value == 0) {
        return false;
    }
    std::string_view rest = name.substr(1 + width->length);
    if (rest.empty() || rest[0] != '@') {
        return false;
    }
    rest.remove_prefix(1);
    const auto offset = parse_unsigned_prefix(rest);
    if (!offset || offset->length >= rest.size() || rest[offset->length] != '/') {
        return false;
    }
    const std::uint64_t container_bits = type.size * 8ull;
    if (width->value > container_bits || offset->value > container_bits - width->value) {
        return false;
    }
    type.bit_width = static_cast<unsigned>(width->value);
    type.bit_offset = static_cast<unsigned>(offset->value);
    return true;
}

// The kernel's store step (finalize_fetch_insn): checks that the type fits
// the last instruction and takes the store, bitfield and array slots.
Failure finish_arg(ArgParse& parse, std::string_view type_name, std::size_t type_position) {
    const FetchType& type = parse.arg.type;
    const bool is_string = is_string_kind(type.kind);
    const LastOp last = parse.last;
    const bool last_is_load = last == LastOp::Deref || last == LastOp::UserDeref;
    if (is_string) {
        if (type.kind == FetchType::Kind::SymbolString) {
            if (last != LastOp::Register && last != LastOp::Stack && last != LastOp::ReturnValue &&
                last != LastOp::Argument && !last_is_load) {
                return ErrorAt{Code::BadSymstring, type_position};
            }
        } else if (!last_is_load && last != LastOp::Immediate && last != LastOp::Comm && last != LastOp::Data) {
            return ErrorAt{Code::BadString, type_position};
        }
        const bool keeps_value = type.kind == FetchType::Kind::SymbolString || last == LastOp::Immediate ||
                                 last == LastOp::Comm || last == LastOp::Data || type.array_length != 0;
        if (keeps_value && !take_slot(parse)) {
            return ErrorAt{Code::TooManyOps, parse.late_position};
        }
    } else if (!last_is_load && !take_slot(parse)) {
        return ErrorAt{Code::TooManyOps, parse.late_position};
    }
    if (type.kind == FetchType::Kind::Bitfield) {
        if (!parse_bitfield(type_name, parse.arg.type) || !take_slot(parse)) {
            return ErrorAt{Code::BadBitfield, type_position};
        }
    }
    if (type.array_length != 0) {
        // An array loops over a store from memory (the kernel also refuses
        // its "user memory" store here; in user space every load is one).
        const bool stores_from_memory = is_string ? type.kind != FetchType::Kind::SymbolString : last_is_load;
        if (!stores_from_memory) {
            return ErrorAt{Code::BadString, type_position};
        }
        if (!take_slot(parse)) {
            return ErrorAt{Code::TooManyOps, parse.late_position};
        }
    }
    return std::nullopt;
}

constexpr std::array<std::string_view, 8> reserved_field_names{
    "common_type", "common_flags", "common_preempt_count", "common_pid",
    "common_tgid", "__probe_ip",   "__probe_ret_ip",       "__probe_func",
};

bool is_name_taken(std::string_view name, const std::vector<FetchArg>& previous) noexcept {
    for (const auto reserved : reserved_field_names) {
        if (reserved == name) {
            return true;
        }
    }
    for (const auto& arg : previous) {
        if (arg.name == name) {
            return true;
        }
    }
    return false;
}

}  // namespace

std::expected<FetchArg, ErrorAt> parse_fetch_arg(std::string_view token, std::size_t position, unsigned index,
                                                 const ArgContext& context, const std::vector<FetchArg>& previous,
                                                 std::size_t& event_size) {
    FetchArg arg;
    arg.position = position;

    // NAME=: the first '=' (the kernel's strchr), except that an immediate
    // string never has a name in front of it without one.
    std::string_view body = token;
    std::size_t body_position = position;
    const auto equals = token.starts_with("\\\"") ? std::string_view::npos : token.find('=');
    if (equals != std::string_view::npos) {
        if (equals > max_arg_name_len) {
            return std::unexpected(ErrorAt{Code::ArgNameTooLong, position});
        }
        if (equals == 0) {
            return std::unexpected(ErrorAt{Code::NoArgName, position});
        }
        arg.name = std::string(token.substr(0, equals));
        body = token.substr(equals + 1);
        body_position = position + equals + 1;
    } else {
        arg.name = "arg" + std::to_string(index + 1);
    }
    if (!is_good_name(arg.name)) {
        return std::unexpected(ErrorAt{Code::BadArgName, position});
    }
    if (is_name_taken(arg.name, previous)) {
        return std::unexpected(ErrorAt{Code::UsedArgName, position});
    }

    if (body.size() > max_argstr_len) {
        return std::unexpected(ErrorAt{Code::ArgTooLong, body_position});
    }
    if (body.empty()) {
        return std::unexpected(ErrorAt{Code::NoArgBody, body_position});
    }

    // :TYPE[[N]]
    std::size_t colon_search_from = 0;
    if (body.starts_with("\\\"")) {
        const auto quote = body.rfind('"');
        if (quote != std::string_view::npos && quote >= 2) {
            colon_search_from = quote + 1;
        }
    }
    const auto colon = body.find(':', colon_search_from);
    const std::string_view expression = body.substr(0, colon);
    std::string_view type_name;
    std::size_t type_offset = 0;
    if (colon != std::string_view::npos) {
        type_offset = colon + 1;
        const std::string_view type_text = body.substr(type_offset);
        const auto open = type_text.find('[');
        type_name = type_text.substr(0, open);
        if (open != std::string_view::npos) {
            const std::size_t count_offset = type_offset + open + 1;
            const std::string_view count_text = type_text.substr(open + 1);
            const auto close = count_text.find(']');
            if (close == std::string_view::npos) {
                return std::unexpected(ErrorAt{Code::ArrayNoClose, body_position + count_offset + count_text.size()});
            }
            if (close + 1 != count_text.size()) {
                return std::unexpected(ErrorAt{Code::BadArraySuffix, body_position + count_offset + close + 1});
            }
            const auto count = parse_unsigned(count_text.substr(0, close));
            if (!count || *count == 0 || *count > 0xffffffffu) {
                return std::unexpected(ErrorAt{Code::BadArrayNum, body_position + count_offset});
            }
            if (*count > max_array_len) {
                return std::unexpected(ErrorAt{Code::ArrayTooBig, body_position + count_offset});
            }
            arg.type.array_length = static_cast<unsigned>(*count);
        }
    }
    const std::size_t type_position = body_position + type_offset;
    const bool is_string_source =
        expression == "$comm" || expression == "$COMM" || expression.starts_with("\\\"");
    std::optional<FetchType> type;
    if (is_string_source) {
        if (arg.type.array_length != 0 || (colon != std::string_view::npos && type_name != "string")) {
            return std::unexpected(ErrorAt{Code::NeedStringType, type_position});
        }
        type = find_type("string");
    } else {
        type = find_type(colon != std::string_view::npos ? type_name : std::string_view{"x64"});
    }
    if (!type) {
        return std::unexpected(ErrorAt{Code::BadType, type_position});
    }
    type->array_length = arg.type.array_length;
    type->given = colon != std::string_view::npos;
    arg.type = *type;

    // The kernel's record holds a 4-byte data location for each string.
    const std::size_t element_size = is_string_kind(arg.type.kind) ? 4 : arg.type.size;
    event_size += element_size * (arg.type.array_length != 0 ? arg.type.array_length : 1);
    if (event_size > max_probe_event_size) {
        return std::unexpected(ErrorAt{Code::EventTooBig, body_position});
    }

    ArgParse parse{context, arg};
    parse.late_position = body_position;
    if (const auto failure = parse_root(expression, body_position, parse)) {
        return std::unexpected(*failure);
    }
    if (const auto failure = finish_arg(parse, type_name, type_position)) {
        return std::unexpected(*failure);
    }
    return arg;
}

}  // namespace definition_detail
}  // namespace ukp::tracer
