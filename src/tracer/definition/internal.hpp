// Pieces the definition parser's files share; nothing here is public.
//
// Facts this relies on:
//  - The kernel reports a definition error as one code from trace_probe.h's
//    ERRORS list (or trace_events_filter.c's for filters) plus the byte
//    offset of its caret in the command rebuilt from argv with single
//    spaces.  We keep the command as given and count offsets from each
//    token's real start, which is the same for single-spaced commands.
//  - Numbers are read as the kernel's kstrtoul/kstrtol read them: base 0
//    ("0x" hex, leading "0" octal, else decimal), the whole string, an
//    overflow is an error (-ERANGE), never a wrap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <optional>
#include <string_view>
#include <vector>

#include "tracer/definition.hpp"

namespace ukp::tracer::definition_detail {

// One list of error codes, each with the message the user sees.  The
// kernel's wording is kept verbatim (typos included: "valiable"), so that
// users can search for it; codes marked "ours" have no kernel equivalent.
#define UKP_DEFINITION_ERRORS(X)                                                              \
    /* trace_probe.h */                                                                       \
    X(BadRefcnt, "Invalid reference counter offset")                                          \
    X(RefcntOpenBrace, "Reference counter brace is not closed")                               \
    X(BadRefcntSuffix, "Reference counter has wrong suffix")                                  \
    X(BadUprobeOffs, "Invalid uprobe offset")                                                 \
    X(BadMaxactType, "Maxactive is only for function exit")                                   \
    X(BadMaxact, "Invalid maxactive number")                                                  \
    X(MaxactTooBig, "Maxactive is too big")                                                   \
    X(BadProbeAddr, "Invalid probed address or symbol")                                       \
    X(BadRetprobe, "Retprobe address must be an function entry")                              \
    X(BadAddrSuffix, "Invalid probed address suffix")                                         \
    X(NoGroupName, "Group name is not specified")                                             \
    X(GroupTooLong, "Group name is too long")                                                 \
    X(BadGroupName, "Group name must follow the same rules as C identifiers")                 \
    X(NoEventName, "Event name is not specified")                                             \
    X(EventTooLong, "Event name is too long")                                                 \
    X(BadEventName, "Event name must follow the same rules as C identifiers")                 \
    X(RetvalOnProbe, "$retval is not available on probe")                                     \
    X(BadStackNum, "Invalid stack number")                                                    \
    X(BadArgNum, "Invalid argument number")                                                   \
    X(BadVar, "Invalid $-valiable specified")                                                 \
    X(BadRegName, "Invalid register name")                                                    \
    X(BadMemAddr, "Invalid memory address")                                                   \
    X(BadImm, "Invalid immediate value")                                                      \
    X(ImmstrNoClose, "String is not closed with '\"'")                                        \
    X(FileOnKprobe, "File offset is not available with kprobe")                               \
    X(BadFileOffs, "Invalid file offset value")                                               \
    X(TooManyOps, "Dereference is too much nested")                                           \
    X(DerefNeedBrace, "Dereference needs a brace")                                            \
    X(BadDerefOffs, "Invalid dereference offset")                                             \
    X(DerefOpenBrace, "Dereference brace is not closed")                                      \
    X(CommCantDeref, "$comm can not be dereferenced")                                         \
    X(BadFetchArg, "Invalid fetch argument")                                                  \
    X(ArrayNoClose, "Array is not closed")                                                    \
    X(BadArraySuffix, "Array has wrong suffix")                                               \
    X(BadArrayNum, "Invalid array size")                                                      \
    X(ArrayTooBig, "Array number is too big")                                                 \
    X(BadType, "Unknown type is specified")                                                   \
    X(BadString, "String accepts only memory argument")                                       \
    X(BadSymstring, "Symbol String doesn't accept data/userdata")                             \
    X(BadBitfield, "Invalid bitfield")                                                        \
    X(ArgNameTooLong, "Argument name is too long")                                            \
    X(NoArgName, "Argument name is not specified")                                            \
    X(BadArgName, "Argument name must follow the same rules as C identifiers")                \
    X(UsedArgName, "This argument name is already used")                                      \
    X(ArgTooLong, "Argument expression is too long")                                          \
    X(NoArgBody, "No argument expression")                                                    \
    X(NoEpFilter, "No filter rule after 'if'")                                                \
    X(NosupBtfarg, "BTF is not available or not supported")                                   \
    X(BadVarArgs, "$arg* must be an independent parameter without name etc.")                 \
    X(NofentryArgs, "$arg* can be used only on function entry or exit")                       \
    X(DoubleArgs, "$arg* can be used only once in the parameters")                            \
    X(NeedStringType, "$comm and immediate-string only accepts string type")                  \
    X(TooManyArgs, "Too many arguments are specified")                                        \
    X(EventTooBig, "Event too big (too many fields?)")                                        \
    /* trace_events_filter.c */                                                               \
    X(FilterInvalidOp, "Invalid operator")                                                    \
    X(FilterTooManyOpen, "Too many '('")                                                      \
    X(FilterTooManyClose, "Too few '('")                                                      \
    X(FilterMissingQuote, "Missing matching quote")                                           \
    X(FilterOperandTooLong, "Operand too long")                                               \
    X(FilterExpectString, "Expecting string field")                                           \
    X(FilterExpectDigit, "Expecting numeric field")                                           \
    X(FilterIllegalFieldOp, "Illegal operation for field type")                               \
    X(FilterFieldNotFound, "Field not found")                                                 \
    X(FilterIllegalIntval, "Illegal integer value")                                           \
    X(FilterTooManyPreds, "Too many terms in predicate expression")                           \
    X(FilterInvalid, "Meaningless filter expression")                                         \
    X(FilterInvalidValue, "Invalid value (did you forget quotes)?")                           \
    /* ours: the kernel fails these silently (-EINVAL, no error_log line) */                  \
    X(EmptyDefinition, "Empty probe definition")                                              \
    X(BadProbeType, "Probe type must be 'p', 'r' or '-'")                                     \
    X(NoProbePoint, "Probe point is not specified")                                           \
    X(RemoveTakesEventOnly, "Removal takes only -:[GRP/]EVENT")                               \
    /* ours: limits and choices of ukprobe */                                                 \
    X(GlobWithEvent, "Event name can not be given with a glob pattern (one event per match)") \
    X(FilterTooDeep, "Too many nested '(' in filter")

enum class Code : std::uint8_t {
#define UKP_DEFINITION_ERROR_ENUM(name, text) name,
    UKP_DEFINITION_ERRORS(UKP_DEFINITION_ERROR_ENUM)
#undef UKP_DEFINITION_ERROR_ENUM
};

[[nodiscard]] std::string_view message_of(Code code) noexcept;

// An error before it is attached to its command: the code and the byte
// offset of the caret in the command.
struct ErrorAt {
    Code code;
    std::size_t position;
};

// "No error" or the first error, for steps that produce nothing.
using Failure = std::optional<ErrorAt>;

// --- Numbers, as the kernel's kstrto* family reads them -----------------

// kstrtoull(s, 0): an optional '+', then base 0; the whole string.
[[nodiscard]] std::optional<std::uint64_t> parse_unsigned(std::string_view text) noexcept;
// kstrtoll(s, 0): an optional '-' (or '+'), then base 0; the whole string.
[[nodiscard]] std::optional<std::int64_t> parse_signed(std::string_view text) noexcept;
// kstrtoul(s, 10): decimal digits only (an optional '+'); the whole string.
[[nodiscard]] std::optional<std::uint64_t> parse_decimal(std::string_view text) noexcept;
// simple_strtoul(s, &end, 0): the longest numeric prefix; nullopt when
// there is none or it overflows (the kernel wraps; we refuse).
struct Prefix {
    std::uint64_t value;
    std::size_t length;
};
[[nodiscard]] std::optional<Prefix> parse_unsigned_prefix(std::string_view text) noexcept;

[[nodiscard]] bool is_digit(char c) noexcept;
[[nodiscard]] bool is_alpha(char c) noexcept;
[[nodiscard]] bool is_alnum(char c) noexcept;
[[nodiscard]] bool is_space(char c) noexcept;
// The kernel's is_good_name(): a C identifier.
[[nodiscard]] bool is_good_name(std::string_view name) noexcept;

// --- Fetch args (fetch_args.cpp) ------------------------------------------

// What the probe point tells the fetch-arg parser.
struct ArgContext {
    bool is_return = false;
    // $argN needs the function's entry (or its exit): a symbol at +0, or a
    // raw address/file offset that the tracer checks when it attaches.
    bool at_function_entry = false;
    // @+OFFS (a file offset) needs a file: the PLACE named one.
    bool has_file = false;
};

// Parses one whitespace-free FETCHARG token starting at `position` in the
// command.  `used_names` holds the names of the args before it; `event_size`
// accumulates the kernel's event record size (MAX_PROBE_EVENT_SIZE).
[[nodiscard]] std::expected<FetchArg, ErrorAt> parse_fetch_arg(std::string_view token, std::size_t position,
                                                               unsigned index, const ArgContext& context,
                                                               const std::vector<FetchArg>& previous,
                                                               std::size_t& event_size);

// --- Filters (filter.cpp) -------------------------------------------------

// Parses the text after "if"; `position` is where it starts in the command.
[[nodiscard]] std::expected<Filter, ErrorAt> parse_filter(std::string_view text, std::size_t position,
                                                          const std::vector<FetchArg>& args);

// Kernel limits (trace_probe.h, trace.h, kretprobe).
inline constexpr std::size_t max_trace_args = 128;        // MAX_TRACE_ARGS
inline constexpr std::size_t max_argstr_len = 63;         // MAX_ARGSTR_LEN
inline constexpr unsigned max_array_len = 64;             // MAX_ARRAY_LEN
inline constexpr std::size_t max_arg_name_len = 32;       // MAX_ARG_NAME_LEN
inline constexpr std::size_t max_event_name_len = 64;     // MAX_EVENT_NAME_LEN, with its NUL
inline constexpr std::size_t max_probe_event_size = 3072; // MAX_PROBE_EVENT_SIZE
inline constexpr unsigned max_fetch_insns = 16;           // FETCH_INSN_MAX
inline constexpr unsigned max_maxactive = 4096;           // KRETPROBE_MAXACTIVE_MAX
// PARAM_MAX_STACK on x86-64: THREAD_SIZE (16 KiB) / sizeof(long).  The
// kernel bounds $argN with it for every probe type; we keep the bound.
inline constexpr std::uint64_t max_argument_number = 2048;

}  // namespace ukp::tracer::definition_detail
