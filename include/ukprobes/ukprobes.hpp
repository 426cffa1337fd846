// ukprobes: kprobes for user-space x86-64 programs.  The C++ API.
//
//   ukp::Kprobe probe{.symbol_name = "libc.so.6:write",
//                     .pre_handler = [](ukp::Kprobe&, ukp::Regs& regs) {
//                         /* regs.di, regs.si, regs.dx: fd, buffer, count */
//                         return 0;
//                     }};
//   if (auto registered = ukp::register_kprobe(probe); !registered)
//       fmt::print(stderr, "{}\n", registered.error().message);
//   ...
//   ukp::unregister_kprobe(probe);
//
// Semantics follow the kernel's kprobes (Documentation/trace/kprobes.rst):
// - pre_handler runs before the probed instruction with the registers as
//   they are there (regs.ip is the probe address).  It may change them.
//   Returning non-zero means "I have set regs.ip; do not execute the probed
//   instruction": execution continues at regs.ip.
// - post_handler runs after the probed instruction, with regs.ip at the next
//   instruction.
// - fault_handler runs when a handler of this probe faults; returning
//   non-zero means it fixed the cause and the faulting access is retried.
// - Several probes on one address run in registration order.
// - A probe hit while a handler of any probe runs on the same thread runs no
//   handler: nmissed() counts it.
// Handlers run inside a SIGTRAP handler of the thread that hit the probe:
// only async-signal-safe functions are strictly safe there (see README).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ukprobes/error.hpp"
#include "ukprobes/kretprobe_instance.hpp"
#include "ukprobes/pt_regs.h"

namespace ukp {

using Regs = ::pt_regs;

struct Kprobe;
using PreHandler = std::function<int(Kprobe&, Regs&)>;
using PostHandler = std::function<void(Kprobe&, Regs&, unsigned long flags)>;
using FaultHandler = std::function<int(Kprobe&, Regs&, int trap_number)>;

// Kprobe::flags, with the kernel's values.
inline constexpr unsigned flag_disabled = 2;  // KPROBE_FLAG_DISABLED: registered but not armed
// Keep this probe on the int3 path (and every probe sharing its address).
inline constexpr unsigned flag_no_optimize = 0x100;  // UKP_NO_OPTIMIZE

namespace detail {
struct ProbeState;
// The engine's bookkeeping for one Kprobe; makes Kprobe non-copyable while
// keeping it an aggregate, so designated initializers work.
class Registration {
public:
    Registration() = default;
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    ~Registration();
    ProbeState* state = nullptr;
};
}  // namespace detail

struct Kprobe {
    // Where: an address, or a symbol ("name" or "module:name", the module by
    // its file name like "libc.so.6"), plus an offset added to either.
    void* addr = nullptr;
    // Every member has a default initializer so that designated
    // initializers naming only some of them compile warning-free.
    std::string symbol_name{};
    std::uint64_t offset = 0;

    PreHandler pre_handler{};
    PostHandler post_handler{};
    FaultHandler fault_handler{};
    unsigned flags = 0;
    void* data = nullptr;  // for the user; ukprobes never touches it

    // Counters, valid while registered and after unregistration.
    [[nodiscard]] std::uint64_t nhit() const noexcept;
    [[nodiscard]] std::uint64_t nmissed() const noexcept;
    // Handler calls abandoned because the handler faulted.
    [[nodiscard]] std::uint64_t nfault() const noexcept;
    [[nodiscard]] bool is_registered() const noexcept;
    [[nodiscard]] bool is_enabled() const noexcept;
    // The resolved address (also written to `addr` at registration, as the
    // kernel does).
    [[nodiscard]] void* address() const noexcept;

    detail::Registration registration{};  // the engine's; do not touch
};

[[nodiscard]] Result<void> register_kprobe(Kprobe& probe);
void unregister_kprobe(Kprobe& probe);
// All or nothing: when one fails, those registered before it are unregistered.
[[nodiscard]] Result<void> register_kprobes(std::span<Kprobe* const> probes);
void unregister_kprobes(std::span<Kprobe* const> probes);
[[nodiscard]] Result<void> enable_kprobe(Kprobe& probe);
[[nodiscard]] Result<void> disable_kprobe(Kprobe& probe);

// What is probed now, like the kernel's /sys/kernel/debug/kprobes/list.
struct ProbeInfo {
    std::uint64_t address;
    std::string where;        // "symbol+0x4 [module]"
    std::string kind;         // "optimized", "emulated", "boosted" or "boosted+post-trap"
    std::string not_optimized;  // why it is not optimized; empty when it is
    std::string instruction;  // the probed instruction, disassembled
    bool enabled;
    std::uint64_t nhit, nmissed, nfault;
};
[[nodiscard]] std::vector<ProbeInfo> list_probes();
// One line per probe, like the kernel's list:
// "ADDRESS  k  WHERE  KIND  [OPTIMIZED] [DISABLED]", counters, and why a
// probe is not optimized.
[[nodiscard]] std::string format_probe_list();

// Functions of the loaded modules whose names match a shell glob
// ("sqlite3_*"), in `module` ("libz.so.1") or in every module when empty;
// sorted by address.  What a user probes a whole library with.
struct FunctionSymbol {
    std::string name;
    std::string module;
    std::uint64_t address;
    std::uint64_t size;
};
[[nodiscard]] Result<std::vector<FunctionSymbol>> find_functions(std::string_view module, std::string_view pattern);

// Inside a handler: copies the probed context's vector register `index`
// (x86-64: xmm<index>, 16 bytes) to `out`.  False outside a handler, and for
// registers the probe did not save (an entry trampoline saves xmm0-7, the
// ABI's argument registers).  How typed entry probes read floating-point
// arguments.
[[nodiscard]] bool probed_vector_register(unsigned index, void* out) noexcept;

// Reads memory that may not be there, without faulting: a bad address
// makes the read fail instead of killing the program (the kernel's
// copy_from_user_nofault).  Safe in handlers; a successful read costs the
// loads only.  The first call outside a handler installs ukprobes' fault
// handlers if no probe has yet.
// Copies `size` bytes; false (with `out` partly written) when any of them
// could not be read.
[[nodiscard]] bool read_memory(void* out, const void* address, std::size_t size) noexcept;
// Copies a NUL-terminated string into out[0..size) and always terminates it;
// returns its length (truncated to size - 1), or -1 when `address` could
// not be read (out then holds what was read before the fault, terminated).
[[nodiscard]] long read_string(char* out, const void* address, std::size_t size) noexcept;

// Code that must never be probed, in addition to ukprobes' own code and the
// signal return trampoline (the kernel's NOKPROBE_SYMBOL).
void blacklist_range(std::uint64_t start, std::uint64_t end);

// What happens when a handler faults and has no fault_handler that claims
// the fault: Recover abandons that handler call (the program continues as if
// it returned 0; nfault() counts it, stderr says it once per probe); Abort
// prints the same line and aborts the process.
enum class HandlerFaultPolicy { Recover, Abort };
void set_handler_fault_policy(HandlerFaultPolicy policy);

// The process-wide switch for jump optimization (on by default).  Switching
// it off takes every optimized probe back to int3.
void set_optimization(bool enabled);
// Retries optimizations that were waiting for threads to leave a displaced
// region; returns how many still wait.
std::size_t optimize_pending_probes();

// Frees slots of unregistered probes that earlier unregistrations had to
// leave because a thread was still inside; returns how many still wait.
std::size_t reclaim_retired_probes();

// --- Return probes (the kernel's kretprobes) ------------------------------
//
//   ukp::Kretprobe timing{.kp = {.symbol_name = "compress"},
//                         .handler = [](ukp::KretprobeInstance& instance, ukp::Regs& regs) {
//                             auto started = *static_cast<std::uint64_t*>(instance.data);
//                             /* regs.ax: the return value */
//                             return 0;
//                         },
//                         .entry_handler = [](ukp::KretprobeInstance& instance, ukp::Regs&) {
//                             *static_cast<std::uint64_t*>(instance.data) = now();
//                             return 0;
//                         },
//                         .data_size = sizeof(std::uint64_t)};
//
// Semantics follow the kernel's (Documentation/trace/kprobes.rst, "Return
// probes"): kp names a function's first instruction (kp.offset must be 0,
// kp must have no handlers of its own: its pre_handler is the return
// probe's).  On each call, entry_handler runs at entry with the function's
// registers; non-zero from it means "do not watch this call's return".  When
// the function returns, handler runs with the registers as the function
// left them (regs.ax: regs_return_value()) and regs.ip = the real return
// address; changes to the general registers are kept, changes to ip and sp
// are not.  Both see the same instance, whose `data` holds data_size bytes
// (16-byte aligned, not zeroed) private to this call.
//
// maxactive: in user space, the most calls of this function per thread whose
// return is watched at the same time (recursion depth); <= 0 means 64.
// Calls beyond it run unwatched and count in nmissed().
//
// Calls left without returning: longjmp, a C++ exception, pthread_exit.  They
// run no return handler; nabandoned() counts them.  The return addresses are
// put back before an exception's unwinder or pthread_exit see the stack, so
// exceptions propagate exactly as without the probe.  Not yet handled:
// pthread_cancel through a watched call (the process aborts in glibc), alternate
// signal stacks above the thread's stack, coroutine stack switching.
//
// After unregister_kretprobe returns, no handler of the probe runs any more;
// calls still pending return to the right place.  The object may then be
// destroyed even while calls are pending.
struct Kretprobe;


using ReturnHandler = std::function<int(KretprobeInstance&, Regs&)>;

namespace detail {
struct KretprobeState;
class KretprobeRegistration {
public:
    KretprobeRegistration() = default;
    KretprobeRegistration(const KretprobeRegistration&) = delete;
    KretprobeRegistration& operator=(const KretprobeRegistration&) = delete;
    ~KretprobeRegistration();
    KretprobeState* state = nullptr;
};
}  // namespace detail

struct Kretprobe {
    Kprobe kp{};
    ReturnHandler handler{};
    ReturnHandler entry_handler{};
    std::size_t data_size = 0;
    int maxactive = 0;

    // Counters of the current (or last) registration.
    // Calls not watched: maxactive reached (kernel: nmissed).
    [[nodiscard]] std::uint64_t nmissed() const noexcept;
    // Watched calls left without returning (longjmp, exception, pthread_exit).
    [[nodiscard]] std::uint64_t nabandoned() const noexcept;
    // Watched calls not yet returned, in every thread, with those whose
    // entry handler runs (one whose entry handler faulted counts until its
    // thread's next watched call or return).
    [[nodiscard]] std::uint64_t npending() const noexcept;
    [[nodiscard]] bool is_registered() const noexcept;

    // Last member: destroyed first, it unregisters a registered probe while
    // kp and the handlers still exist.
    detail::KretprobeRegistration registration{};  // the engine's; do not touch
};

[[nodiscard]] Result<void> register_kretprobe(Kretprobe& probe);
void unregister_kretprobe(Kretprobe& probe);
// All or nothing, like register_kprobes.
[[nodiscard]] Result<void> register_kretprobes(std::span<Kretprobe* const> probes);
void unregister_kretprobes(std::span<Kretprobe* const> probes);

}  // namespace ukp
