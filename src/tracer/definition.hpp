// Probe definitions in the kernel's kprobe_events / uprobe_events language
// (Documentation/trace/kprobetrace.rst, uprobetracer.rst), as ukprobe reads
// them.  The parser is pure: it knows no process, no ELF file and no probe
// engine, so that `ukprobe check`, the agent inside the traced program and
// the fuzzer all run the same code.
//
//   p[:[GRP/][EVENT]] PLACE [FETCHARGS] [if FILTER]
//   r[MAXACTIVE][:[GRP/][EVENT]] PLACE [FETCHARGS] [if FILTER]
//   -:[GRP/]EVENT
//
// PLACE: [MODULE:]SYM[+offs], SYM%return, an absolute address (0x...),
// PATH:0xOFFSET[%return] (the uprobe form: a file offset), PATH:SYM[+offs].
// SYM may be a shell glob: one probe per matching function.
// The trailing `if FILTER` is ours (the kernel sets filters through a
// separate file): the kernel's event-filter language over the fetch args.
//
// Errors carry the kernel's message (trace_probe.h's ERRORS list) and the
// byte position the kernel's error_log would put its caret under.
//
// Where ukprobe departs from the kernel (each one listed with its test in
// tests/unit/tracer_definition/golden.txt):
//  - A \"string\" immediate may hold spaces and ':' (the kernel's cannot).
//  - %REG also takes the 64-bit names rax rbx rcx rdx rsi rdi rbp rsp rip
//    and eflags/rflags, as aliases of the pt_regs names.
//  - @SYM and the symbol/symstr types work in every probe (the kernel has
//    no user symbols for uprobes); @+OFFS needs a PLACE that names a file.
//  - $argN (System V ABI) works at a function's entry and, as its value at
//    entry, in return probes; a bare name or $arg* (BTF) is refused.
//  - $stackN is not bounded by a kernel stack size.
//  - A glob SYM cannot have an explicit EVENT (one event per match): give
//    only GRP/ and derive each match's name with derive_event_name().
//  - Checks that need the file system, the symbol table or other probes
//    (a missing file or symbol, an instruction boundary, a duplicate
//    event) belong to the tracer, after parsing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ukp::tracer {

struct DefinitionError {
    std::string message;   // the kernel's wording, e.g. "Invalid register name"
    std::size_t position;  // byte offset into `command`
    std::string command;   // the definition as given
};

// "ukprobe: error: MESSAGE\n  COMMAND\n  <spaces>^\n"
[[nodiscard]] std::string format_error(const DefinitionError& error, std::string_view program = "ukprobe");

enum class ProbeType { Entry, Return, Remove };

struct Place {
    enum class Form {
        Symbol,      // [MODULE:]SYM[+offs]; also PATH:SYM[+offs]
        Address,     // 0xADDR: an address in the running process
        FileOffset,  // PATH:0xOFFSET, the uprobe form
    };
    Form form = Form::Symbol;
    std::string module;          // Symbol: "" (any module), "libc.so.6" or a path.  FileOffset: the path.
    std::string symbol;          // Symbol form
    bool glob = false;           // symbol contains *, ? or [
    std::uint64_t offset = 0;    // Symbol: +offs.  FileOffset: the file offset.
    std::uint64_t address = 0;   // Address form
    std::size_t position = 0;    // where PLACE starts in the command (for later errors)
    // FileOffset: PATH:OFFSET(REF_CTR_OFFSET), the file offset of an SDT
    // semaphore to increment while the probe is armed.
    std::optional<std::uint64_t> reference_counter_offset;
};

// Where a fetch arg's value starts.
enum class FetchRoot {
    Register,         // %REG: register = its index (see register_names())
    Memory,           // @ADDR: address
    Symbol,           // @SYM[+|-offs]: symbol, symbol_offset
    StackEntry,       // $stackN: index = N
    StackPointer,     // $stack
    Argument,         // $argN: index = N (1-based, as the kernel)
    ReturnValue,      // $retval (return probes only)
    Comm,             // $comm: the thread's name
    Immediate,        // \IMM: address holds the value
    StringImmediate,  // \"string": string_value
    FileOffset,       // @+OFFS: memory at file offset `address` of the PLACE's file, where it is mapped
};

// +|-[u]OFFS(...): read at (inner value + offset).
//
// Memory, Symbol and FileOffset roots already read memory: their value is
// what is stored at the address.  For the string and ustring types the last
// read is not done: the string starts at the address it would have read
// from (+0(%di):string is the string at %di, @ADDR:string the string at
// ADDR); \IMM:string is the string at IMM.  With an array (string[N]) that
// last read is done and yields N pointers, one string each.  symstr keeps
// every read: it names the symbol at the final value.
struct Dereference {
    std::int64_t offset = 0;
    bool user = false;  // the 'u' prefix; in user space every address is a user address
};

struct FetchType {
    enum class Kind {
        Unsigned,  // u8..u64
        Signed,    // s8..s64
        Hex,       // x8..x64
        Char,      // char: printed as a character
        String,    // string: a NUL-terminated string at the value
        UString,   // ustring: the same in user space
        SymbolAddress,  // symbol: the value printed as SYM+off/size
        SymbolString,   // symstr: the same, as a string field
        Bitfield,  // b<width>@<offset>/<container>
    };
    Kind kind = Kind::Hex;
    unsigned size = 8;          // bytes of one element: 1, 2, 4, 8; the container for a bitfield; 0 for strings
    unsigned bit_width = 0;     // Bitfield
    unsigned bit_offset = 0;    // Bitfield
    unsigned array_length = 0;  // TYPE[N]: N; 0 for a scalar
    bool given = false;         // the definition named a type (otherwise the kernel's default)
};

struct FetchArg {
    std::string name;  // as given, or the kernel's default ("arg1", "arg2", ...)
    FetchRoot root = FetchRoot::Register;
    unsigned register_index = 0;     // Register: index into register_names()
    unsigned index = 0;              // StackEntry, Argument
    std::uint64_t address = 0;       // Memory, Immediate
    std::string symbol;              // Symbol
    std::int64_t symbol_offset = 0;  // Symbol
    std::string string_value;        // StringImmediate
    // Applied in order: derefs[0] is the innermost +OFFS(...).
    std::vector<Dereference> derefs;
    FetchType type;
    std::size_t position = 0;  // where this arg starts in the command
};

// The filter language of the kernel's events/*/filter files, over the
// fields (fetch args) of one definition:
//   FIELD OP VALUE, with OP one of == != < <= > >= & (numbers) and == != ~
//   (strings, ~ is a shell glob), combined with && || ! and parentheses.
class Filter {
public:
    // A fetched field as the hit path has it: a number (already sign- or
    // zero-extended per its type) or a string.  Fields of the string types
    // and char arrays are strings; a predicate on a missing field or one of
    // the other kind (e.g. a string that faulted) does not hold.
    struct Value {
        std::uint64_t number = 0;
        std::string_view string{};
        bool is_string = false;
    };
    Filter();
    Filter(Filter&&) noexcept;
    Filter& operator=(Filter&&) noexcept;
    ~Filter();

    // fields[i] is the value of args[i] of the definition.  No allocation,
    // no exceptions, no system calls: it runs in the probe's handler.
    [[nodiscard]] bool matches(std::span<const Value> fields) const noexcept;
    // The arg indexes the filter reads.
    [[nodiscard]] std::vector<unsigned> fields_used() const;

    struct Program;  // the parser's compiled form
    explicit Filter(std::unique_ptr<Program> program);

private:
    std::unique_ptr<Program> program_;
};

struct Definition {
    ProbeType type = ProbeType::Entry;
    std::string group;   // "" when not given (ukprobe then uses "ukprobes")
    std::string event;   // given, or derived as the kernel derives it
    bool event_given = false;
    int maxactive = 0;   // r<N>: N; 0 when not given
    Place place;
    std::vector<FetchArg> args;
    std::optional<Filter> filter;
    std::string command;  // the text it was parsed from
};

[[nodiscard]] std::expected<Definition, DefinitionError> parse_definition(std::string_view command);

// The event name the kernel would give a definition without one (see
// definition.cpp).  For a glob place, call it once per matched symbol with
// `symbol` set to the match and `glob` cleared.
[[nodiscard]] std::string derive_event_name(ProbeType type, const Place& place);

// The register names %REG accepts (besides the aliases above), in pt_regs order: index i names the i-th
// unsigned long of struct pt_regs (include/ukprobes/pt_regs.h), so a value
// is reinterpret_cast<const unsigned long*>(&regs)[index].
[[nodiscard]] std::span<const std::string_view> register_names();

}  // namespace ukp::tracer
