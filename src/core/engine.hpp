// The process-wide probe manager: the registry that front ends (the C++ API,
// the kernel-compatible C API) call, and the state the trap path reads.
//
// Locking: one mutex serializes registration, unregistration, enable and
// disable (the kernel's kprobe_mutex).  The trap path takes no lock: it reads
// the probe table, handler lists and slot owners, all published with atomic
// stores and freed only after a grace period (grace_period.cpp).
#pragma once

#include <signal.h>

#include <algorithm>
#include <array>
#include <map>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/probe.hpp"
#include "core/probe_table.hpp"
#include "core/xol_slots.hpp"
#include "elf/symbols.hpp"
#include "os/linux/memory.hpp"
#include "ukprobes/error.hpp"

namespace ukp::core {

// Where a record asks to be placed: an address, or "[module:]symbol", plus
// an offset added to either (the kernel's addr/symbol_name/offset).
struct ProbeTarget {
    std::uint64_t address = 0;
    std::string symbol;
    std::uint64_t offset = 0;
};

enum class HandlerFaultPolicy : int { Recover, Abort };

struct ProbeListing {
    std::uint64_t address;
    std::string where;
    std::string kind;         // "optimized", "emulated", "boosted", "boosted+post-trap"
    std::string not_optimized;  // why it is not optimized, empty when it is
    std::string instruction;  // disassembly of the probed instruction
    bool enabled;
    std::uint64_t nhit, nmissed, nfault;
};

// A ring of addresses disarmed recently: a thread that trapped on one of
// them before it was disarmed, and reaches the dispatcher after the probe
// is gone, restarts the instruction (seed 001's race).  Every address of
// one batch must still be in it when the batch's text is restored, so it
// holds more than the largest batch we expect (a whole library, ~10,000
// functions); contains() scans it only for traps that are not ours.
class RecentlyDisarmed {
public:
    void add(std::uint64_t address) noexcept;
    [[nodiscard]] bool contains(std::uint64_t address) const noexcept;

private:
    static constexpr std::size_t capacity = 1 << 16;
    std::atomic<std::uint64_t> addresses_[capacity] = {};
    std::atomic<std::size_t> next_{0};
};

class Engine {
public:
    // The one process-wide probe manager.
    static Engine& instance();

    // --- front-end operations (take the registry lock) ---
    [[nodiscard]] Result<void> register_probes(std::span<ProbeRecord* const> records,
                                               std::span<const ProbeTarget> targets);
    void unregister_probes(std::span<ProbeRecord* const> records);
    [[nodiscard]] Result<void> set_enabled(ProbeRecord& record, bool enabled);
    [[nodiscard]] Result<std::uint64_t> resolve(const ProbeTarget& target);
    [[nodiscard]] std::vector<ProbeListing> list();
    [[nodiscard]] Result<std::vector<elf::Symbol>> find_functions(std::string_view module, std::string_view pattern);
    void add_blacklist_range(std::uint64_t start, std::uint64_t end);
    // The whole function holding `address`, bounded when probes are placed
    // (NOKPROBE_SYMBOL runs before modules' symbols are worth reading).
    void add_blacklist_function(std::uint64_t address);
    [[nodiscard]] bool is_blacklisted(std::uint64_t address, std::size_t length);
    // Installs the signal handlers and reads the process's modules, once;
    // registration does it too.  Set once it succeeded (read without the lock).
    [[nodiscard]] Result<void> initialize();
    std::atomic<bool> ready{false};
    // Frees what earlier unregistrations left for later; returns how many
    // slots are still waiting for threads to leave them.
    std::size_t reclaim();
    // The code in [start, end) was unmapped (dlclose, unload.cpp): its probes
    // are dropped without writing anything there, and count as unregistered.
    void forget_unmapped_code(std::uint64_t start, std::uint64_t end);

    std::atomic<HandlerFaultPolicy> handler_fault_policy{HandlerFaultPolicy::Recover};
    // The process-wide switch for jump optimization (on by default).
    void set_optimization(bool enabled);
    // Retries optimizations that waited for threads to leave a region;
    // returns how many still wait.
    std::size_t optimize_pending();

    // --- read by the trap path, lock-free ---
    ProbeTable table;
    SlotAllocator slots;
    RecentlyDisarmed recently_disarmed;

    std::mutex& registry_lock() { return lock_; }

private:
    Engine() = default;
    // Code writes of one registry operation.  Writes are queued and go out
    // at sync(), merged so that all writes to one page cost one pwrite of
    // /proc/self/mem (registering thousands of probes would otherwise pay
    // a system call per byte patched), followed by one core sync.
    // Ordering: slot memory (slots and stubs, which nothing reaches yet)
    // is written before program text (breakpoints and jumps, which make
    // them reachable); within a class, later writes win.  Jumps being
    // removed (unoptimizing, optimizer.cpp) go back to int3 in two synced
    // steps of their own, for the whole batch at once, before any other
    // text: a disarm queued after the removal writes the original first
    // byte, which must not land while the jump's tail is still there.
    class Batch {
    public:
        void write_slot(std::uint64_t address, std::span<const std::uint8_t> bytes) { queue(slot_writes_, address, bytes); }
        void write_text(std::uint64_t address, std::span<const std::uint8_t> bytes) { queue(text_writes_, address, bytes); }
        // Unoptimizing's steps 1 and 2: the breakpoint over the jump's first
        // byte, then (after a core sync) the original bytes 1..4.
        void remove_jump(std::uint64_t address, std::span<const std::uint8_t> original);
        // Room for `slots` slot writes and `texts` text writes: a Write is
        // 144 bytes, and growing a queue of thousands copies them all.
        void reserve(std::size_t slots, std::size_t texts) {
            slot_writes_.reserve(slots);
            text_writes_.reserve(texts);
        }
        // Writes everything queued, then makes every thread see it.
        [[nodiscard]] Result<void> sync();
        [[nodiscard]] bool has_changes() const { return changed_; }

        std::vector<ProbePoint*> points_to_remove;
        std::vector<ProbePoint*> touched;  // candidates for (re)optimization
        std::vector<ProbePoint*> unoptimizing;  // whose jumps remove_jump() queued

    private:
        // Inline storage: thousands of writes per batch, no allocation each.
        // A write is a slot or stub (slot_size) or a few bytes of text.
        struct Write {
            std::uint64_t address;
            std::size_t length;
            std::array<std::uint8_t, arch::slot_size> bytes;
        };
        static void queue(std::vector<Write>& writes, std::uint64_t address, std::span<const std::uint8_t> bytes) {
            auto& write = writes.emplace_back();
            write.address = address;
            write.length = std::min(bytes.size(), write.bytes.size());
            std::copy_n(bytes.begin(), write.length, write.bytes.begin());
        }
        [[nodiscard]] Result<void> flush(std::vector<Write>& writes);
        [[nodiscard]] Result<void> sync_cores();
        [[nodiscard]] Result<void> write_jump_removals();
        std::vector<Write> slot_writes_, text_writes_;
        std::vector<Write> jump_heads_, jump_tails_;  // remove_jump()'s two steps
        std::vector<std::uint64_t> removed_jumps_;    // their addresses
        std::optional<os::CodeWriter> writer_;
        bool changed_ = false;   // anything written by this batch
        bool unsynced_ = false;  // written since the last core sync
    };

    [[nodiscard]] Result<void> initialize_locked();
    [[nodiscard]] Result<std::uint64_t> resolve_locked(const ProbeTarget& target);
    [[nodiscard]] Result<void> register_one_locked(ProbeRecord& record, const ProbeTarget& target, Batch& batch);
    void unregister_one_locked(ProbeRecord& record, Batch& batch);
    [[nodiscard]] Result<void> finish_batch_locked(Batch& batch);
    // batch.sync(), then the last step of unoptimizing its points.
    [[nodiscard]] Result<void> sync_locked(Batch& batch);
    [[nodiscard]] Result<ProbePoint*> create_point_locked(std::uint64_t address, Batch& batch);
    // Whether any of these bytes could be a breakpoint or jump we wrote.
    [[nodiscard]] static bool may_be_ours(std::span<const std::uint8_t> code);
    [[nodiscard]] Result<void> check_probe_address_locked(std::uint64_t address);
    // The program's bytes, with our breakpoints and jumps undone in the
    // first `undone` bytes (each 0xCC or jump opcode there costs a table
    // lookup); past them the bytes are as they are in memory.
    [[nodiscard]] std::vector<std::uint8_t> read_original_code(std::uint64_t address, std::size_t length,
                                                               std::size_t undone = SIZE_MAX) const;
    [[nodiscard]] const elf::SymbolIndex& symbols_locked();
    void publish_handlers_locked(ProbePoint& point, std::vector<ProbeRecord*> probes, Batch& batch);
    [[nodiscard]] Result<void> update_arming_locked(ProbePoint& point, Batch& batch);
    std::size_t reclaim_locked();
    [[nodiscard]] bool is_own_code(std::uint64_t pc) const;
    [[nodiscard]] std::string describe_address_locked(std::uint64_t address);

    // Optimization (optimizer.cpp).
    void optimize_locked(std::vector<ProbePoint*> points);
    // Takes effect at the batch's next sync (sync_locked) for an optimized
    // point, at once for a pending one.
    void unoptimize_locked(ProbePoint& point, Batch& batch, std::string reason);
    void finish_unoptimizing_locked(ProbePoint& point);
    // Whether a jump removal was queued.
    bool unoptimize_enclosing_locked(std::uint64_t address, Batch& batch);
    [[nodiscard]] std::string why_not_optimize_locked(const ProbePoint& point);
    // Whether code of the module holding `function_start` may branch or call
    // straight to it (arch::direct_branch_targets, computed once per module).
    [[nodiscard]] bool has_direct_callers_locked(std::uint64_t function_start);
    void complete_optimizations_locked();
    void try_completing_optimizations_locked();

    std::mutex lock_;
    bool initialized_ = false;
    std::optional<elf::SymbolIndex> symbols_;
    // Per module (path, load bias): arch::direct_branch_targets of its code.
    std::map<std::pair<std::string, std::uint64_t>, std::vector<std::uint64_t>> direct_targets_;
    unsigned long long symbols_generation_ = 0;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> blacklist_;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> own_code_;  // this library's code
    std::vector<std::uint64_t> blacklisted_functions_;              // addresses inside them

    // Freed once no thread is inside the dispatcher (and, for points, once no
    // thread's program counter is inside their slot).
    std::vector<std::unique_ptr<const HandlerList>> retired_lists_;
    std::vector<std::unique_ptr<ProbeTable::Array>> retired_arrays_;
    std::vector<ProbePoint*> retired_points_;
    std::vector<std::uint64_t> retired_trampolines_;  // stub slots of unoptimized points

    bool optimization_enabled_ = true;
    std::vector<ProbePoint*> pending_optimizations_;  // Pending, waiting for threads to leave
    std::size_t points_with_stubs_ = 0;  // Pending or Optimized: lets most registrations skip
                                         // looking for an enclosing region
};

// The grace periods (grace_period.cpp).
// Returns once every thread that was inside the trap dispatcher when it was
// called has left it (the calling thread excepted).
void wait_for_dispatchers() noexcept;
// Whether the calling thread is inside the dispatcher (a handler calls us).
[[nodiscard]] bool called_from_handler() noexcept;
// The program counters of every thread that could be inside a slot, or
// nullopt when one of them cannot be known now.
[[nodiscard]] std::optional<std::vector<std::uint64_t>> sample_thread_pcs();
// The same for every thread of the process, whether or not it ever trapped
// (optimizing must know that no thread runs inside a displaced region).
[[nodiscard]] std::optional<std::vector<std::uint64_t>> sample_all_thread_pcs();

// Answers a grace period's request for this thread's program counter.
void on_sampling_signal(int signal, siginfo_t* info, void* context);

// The trap path (dispatch.cpp).
[[nodiscard]] Result<void> install_trap_handlers();

}  // namespace ukp::core
