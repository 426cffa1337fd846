// Grace periods: proving that no thread still uses what we want to free.
//
// Two things can hold on to a probe after it is unregistered:
// 1. A thread inside the trap dispatcher, running the probe's handlers or
//    about to send itself into the probe's slot.  Each thread's record has
//    a sequence number that is odd while it is inside (thread_state.hpp).
//    wait_for_dispatchers() snapshots the odd ones and waits until each has
//    changed.  Precondition: the probe is already unreachable (not in the
//    table, list replaced), published with seq_cst stores; the dispatcher
//    makes its sequence odd with a seq_cst store before it looks anything
//    up.  So either we see the thread inside, or it sees the probe gone.
// 2. A thread whose program counter is inside the probe's slot: it was sent
//    there by the dispatcher and has not yet jumped back, possibly blocked in
//    a system call it issued from the slot.  Only threads that ever entered
//    the dispatcher (those with a record) can be there.  For each we read
//    the PC from /proc/self/task/TID/syscall when it is blocked, and when it
//    is running we ask it with a real-time signal (it answers from its
//    handler with the interrupted PC).  Blocked threads are never signalled,
//    so a blocked system call never sees EINTR because of us.  A thread that
//    does not answer within a bound, or is inside the dispatcher, makes the
//    answer "unknown": the slot is kept and tried again later.
// Known gap: a thread interrupted inside a slot by a signal whose handler
// then blocks shows the handler's PC, not the slot's.  Revisit if programs
// with long-running signal handlers need it (the kernel's uprobes avoids it
// by holding signals back during single-step).
#include <signal.h>
#include <time.h>

#include <chrono>
#include <thread>

#include "arch/backend.hpp"
#include "core/engine.hpp"
#include "core/thread_state.hpp"
#include "os/linux/raw_syscall.hpp"
#include "os/linux/signals.hpp"
#include "os/linux/threads.hpp"

namespace ukp::core {

namespace {

constexpr int sampling_cookie = 0x756b7072;  // "ukpr"
constexpr std::uint64_t pc_unknown = 1;       // never a real PC inside a slot
constexpr auto sample_timeout = std::chrono::milliseconds(50);

void pause_briefly() {
    timespec pause{0, 20'000};
    nanosleep(&pause, nullptr);
}

}  // namespace

bool called_from_handler() noexcept {
    ThreadRecord* self = this_thread_record_if_any();
    return self != nullptr && self->dispatch_depth > 0;
}

void wait_for_dispatchers() noexcept {
    // The heavy side of the fence: every thread that stored an odd sequence
    // has made it visible, and every thread entering from now on sees what
    // we unpublished before it looks anything up.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!os::memory_barrier_all_threads()) {
        // Without membarrier, fall back on a signal round trip per thread
        // being impossible here; a full fence on our side is all we can do.
        std::atomic_thread_fence(std::memory_order_seq_cst);
    }
    ThreadRecord* self = this_thread_record_if_any();
    struct Inside {
        ThreadRecord* record;
        std::uint64_t sequence;
        int tid;
    };
    std::vector<Inside> inside;
    for_each_thread_record([&](ThreadRecord& record) {
        std::uint64_t sequence = record.dispatch_sequence.load(std::memory_order_seq_cst);
        if (&record != self && (sequence & 1)) inside.push_back({&record, sequence, record.tid.load()});
    });
    for (const auto& thread : inside) {
        for (unsigned spins = 0; thread.record->dispatch_sequence.load(std::memory_order_seq_cst) == thread.sequence;
             ++spins) {
            if (thread.record->tid.load() != thread.tid) break;
            // A thread that exited inside a handler never leaves.
            if (spins % 64 == 63 && !os::thread_is_alive(thread.tid)) break;
            if (spins < 16)
                std::this_thread::yield();
            else
                pause_briefly();
        }
    }
}

// One sampling request at a time (the registry lock serializes callers):
// the thread whose tid is `sample_tid` answers with its interrupted PC.
namespace {
std::atomic<int> sample_tid{0};
std::atomic<std::uint64_t> sample_pc{0};
std::atomic<bool> sample_answered{false};
}  // namespace

void on_sampling_signal(int signal, siginfo_t* info, void* context) {
    bool ours = info->si_code == SI_QUEUE && info->si_value.sival_int == sampling_cookie &&
                info->si_pid == os::raw_getpid();
    if (!ours) {
        os::deliver_to_program(signal, info, context, false);
        return;
    }
    if (sample_tid.load(std::memory_order_acquire) != os::raw_gettid()) return;  // a late answer
    ThreadRecord* self = this_thread_record_if_any();
    bool inside = self != nullptr && self->dispatch_depth > 0;
    sample_pc.store(inside ? pc_unknown : arch::ucontext_instruction_pointer(context), std::memory_order_relaxed);
    sample_answered.store(true, std::memory_order_release);
}

namespace {

// The PC of thread `tid`: nullopt when it cannot be known now, 0 when the
// thread is gone.
std::optional<std::uint64_t> sample_thread(int tid) {
    auto position = os::read_thread_position(tid);
    if (!position) return 0;
    if (!position->running) return position->pc;
    const int pid = os::raw_getpid();
    sample_answered.store(false, std::memory_order_relaxed);
    sample_tid.store(tid, std::memory_order_release);
    siginfo_t info{};
    info.si_signo = os::sampling_signal();
    info.si_code = SI_QUEUE;
    info.si_pid = pid;
    info.si_uid = getuid();
    info.si_value.sival_int = sampling_cookie;
    if (os::raw_syscall(SYS_rt_tgsigqueueinfo, pid, tid, info.si_signo, reinterpret_cast<long>(&info)) != 0)
        return os::thread_is_alive(tid) ? std::nullopt : std::optional<std::uint64_t>(0);
    auto deadline = std::chrono::steady_clock::now() + sample_timeout;
    while (!sample_answered.load(std::memory_order_acquire)) {
        if (std::chrono::steady_clock::now() > deadline) break;
        if (!os::thread_is_alive(tid)) return 0;
        std::this_thread::yield();
    }
    sample_tid.store(0, std::memory_order_release);
    if (!sample_answered.load(std::memory_order_acquire)) return std::nullopt;
    std::uint64_t pc = sample_pc.load(std::memory_order_relaxed);
    if (pc == pc_unknown) return std::nullopt;
    return pc;
}

}  // namespace

std::optional<std::vector<std::uint64_t>> sample_thread_pcs() {
    std::vector<std::uint64_t> pcs;
    bool known = true;
    ThreadRecord* self = this_thread_record_if_any();
    for_each_thread_record([&](ThreadRecord& record) {
        int tid = record.tid.load();
        if (!known || &record == self || tid == 0) return;
        if (record.dispatch_sequence.load(std::memory_order_relaxed) & 1) {
            known = false;
            return;
        }
        auto pc = sample_thread(tid);
        if (!pc) known = false;
        else if (*pc != 0) pcs.push_back(*pc);
    });
    if (!known) return std::nullopt;
    return pcs;
}

std::optional<std::vector<std::uint64_t>> sample_all_thread_pcs() {
    std::vector<std::uint64_t> pcs;
    const int self = os::raw_gettid();
    for (int tid : os::list_threads()) {
        if (tid == self) continue;
        auto pc = sample_thread(tid);
        if (!pc) return std::nullopt;
        if (*pc != 0) pcs.push_back(*pc);
    }
    // Threads inside the dispatcher may be about to resume anywhere.
    bool inside = false;
    ThreadRecord* own = this_thread_record_if_any();
    for_each_thread_record([&](ThreadRecord& record) {
        if (&record != own && (record.dispatch_sequence.load(std::memory_order_relaxed) & 1)) inside = true;
    });
    if (inside) return std::nullopt;
    return pcs;
}

}  // namespace ukp::core
