// The agent's hit path: what one probe of a definition does when it is hit.
//
// A CompiledEvent is a definition made concrete for one probe: fetch args
// with symbols resolved to addresses, the record's largest size, where the
// --hist field is.  Its handler runs in the probed thread (inside the
// engine's trampoline or SIGTRAP handler), so it takes no lock, allocates
// nothing, makes no system call after the thread's first hit, and reads
// the program's memory only through the fault-tolerant copy.
#pragma once

#include <cstdint>
#include <expected>
#include <functional>
#include <optional>
#include <string>

#include "tracer/definition.hpp"
#include "tracer/session.hpp"
#include "ukprobes/ukprobes.hpp"

namespace ukp::tracer::agent {

inline constexpr unsigned max_derefs = 8;

struct CompiledArg {
    FetchRoot root = FetchRoot::Register;
    FetchType::Kind kind = FetchType::Kind::Hex;
    std::uint8_t size = 8;        // bytes of one element (8 for strings' sake unused)
    std::uint8_t bit_width = 0;
    std::uint8_t bit_offset = 0;
    std::uint8_t deref_count = 0;
    std::uint16_t array_length = 0;  // 0: scalar
    std::uint16_t register_index = 0;
    std::uint32_t index = 0;         // $stackN, $argN
    std::uint64_t address = 0;       // @ADDR, @SYM (resolved, offset added), \IMM
    std::int64_t derefs[max_derefs] = {};
    const char* string_value = nullptr;  // \"..."
    std::uint16_t string_length = 0;
    // The value is read from memory at the end (a deref or @ADDR/@SYM):
    // numbers read `size` bytes there, strings start there.
    bool reads_memory = false;
    FieldLayout layout = FieldLayout::Numbers;
    // The common case, a register as a scalar integer, takes a short path:
    // value = register & mask, sign-extended from bit `sign_bit` when signed.
    bool register_scalar = false;
    bool is_signed = false;
    std::uint8_t width_bits = 64;
};

struct CompiledEvent {
    std::uint16_t id = 0;
    bool is_return = false;
    std::uint64_t address = 0;
    const Session* session = nullptr;
    const Filter* filter = nullptr;   // owned by the definition
    std::uint32_t arg_count = 0;
    CompiledArg* args = nullptr;      // arg_count of them
    std::uint32_t bitmap_bytes = 0;   // fault bits, one per arg, padded to 8
    std::uint32_t max_record = 0;     // header + bitmap + every field at its largest, 8-aligned
    int hist_field = -1;              // --hist: the arg index, or -1
    // Return probes: how many arguments ($argN) the entry handler keeps for
    // the return (the kernel's "$argN in return probes", values at entry).
    std::uint32_t entry_arguments = 0;
};

// Where a file offset of the definition's PLACE file is mapped (@+OFFS).
using FileOffsetResolver = std::function<std::optional<std::uint64_t>(std::uint64_t offset)>;

// Builds the event; an error message says which arg could not be compiled.
[[nodiscard]] std::expected<CompiledEvent, std::string> compile_event(const Definition& definition,
                                                                      const Session& session, std::uint16_t id,
                                                                      std::uint64_t address,
                                                                      const FileOffsetResolver& file_offsets = {});

// The handlers.  `entry_timestamp` is 0 for entry probes; return probes
// pass the arguments their entry kept (event.entry_arguments of them).
void on_hit(const CompiledEvent& event, const Regs& regs, std::uint64_t entry_timestamp, std::uint64_t location,
            const std::uint64_t* entry_arguments = nullptr) noexcept;
// At a function's entry: its argument `index` (1-based) by the ABI.
[[nodiscard]] std::uint64_t argument_at_entry(const Regs& regs, std::uint32_t index) noexcept;
// The raw clock of records (see ClockKind).
[[nodiscard]] std::uint64_t now(const Session& session) noexcept;

// While one is alive, hits of this thread record nothing: the agent's own
// work (arming, dlopen handling) calls malloc and friends, which may be
// probed, and must not show up as the program's.
class QuietScope {
public:
    QuietScope() noexcept;
    ~QuietScope();
    QuietScope(const QuietScope&) = delete;
    QuietScope& operator=(const QuietScope&) = delete;
};

// Called by the fork child handler: the child's thread must not keep
// writing into the parent thread's ring.
void forget_ring_after_fork() noexcept;
// Once, before any probe can be hit.
void initialize_hit_path(const Session& session) noexcept;

}  // namespace ukp::tracer::agent
