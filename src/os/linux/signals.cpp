#include "os/linux/signals.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <fmt/format.h>
#include <mutex>

#include "os/linux/raw_syscall.hpp"

#ifndef UKP_EXPORT
#define UKP_EXPORT __attribute__((visibility("default")))
#endif

namespace ukp::os {
namespace {

constexpr int max_signal = 65;
using SigactionFn = int (*)(int, const struct sigaction*, struct sigaction*);

SigactionFn real_sigaction() {
    static SigactionFn function = [] {
        auto found = reinterpret_cast<SigactionFn>(::dlsym(RTLD_NEXT, "sigaction"));
        if (found == nullptr) found = reinterpret_cast<SigactionFn>(::dlsym(RTLD_DEFAULT, "__sigaction"));
        if (found == nullptr) {
            // Without libc's sigaction we cannot install anything safely.
            static const char message[] = "ukprobes: cannot find libc's sigaction\n";
            raw_write(2, message, sizeof message - 1);
            std::abort();
        }
        return found;
    }();
    return function;
}

// The program's disposition for one signal we own, readable from signal
// handlers: a sequence lock (odd while being written).
struct RecordedDisposition {
    std::atomic<std::uint64_t> sequence{0};
    std::atomic<bool> owned{false};
    SignalHandler ours = nullptr;
    struct sigaction program {};
};

std::array<RecordedDisposition, max_signal> dispositions;
std::mutex writers;  // serializes writers; readers never take it

// Field-by-field so the compiler emits no call to memcpy on the trap path.
void copy_action(const struct sigaction& from, struct sigaction& to) noexcept {
    to.sa_sigaction = from.sa_sigaction;
    to.sa_flags = from.sa_flags;
    to.sa_restorer = from.sa_restorer;
    auto* source = reinterpret_cast<const volatile unsigned long*>(&from.sa_mask);
    auto* target = reinterpret_cast<volatile unsigned long*>(&to.sa_mask);
    for (std::size_t i = 0; i < sizeof(sigset_t) / sizeof(unsigned long); ++i) target[i] = source[i];
}

struct sigaction read_program_action(int signal) noexcept {
    auto& slot = dispositions[signal];
    struct sigaction copy {};
    for (;;) {
        std::uint64_t before = slot.sequence.load(std::memory_order_acquire);
        if (before & 1) continue;
        copy_action(slot.program, copy);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (slot.sequence.load(std::memory_order_relaxed) == before) return copy;
    }
}

void write_program_action(int signal, const struct sigaction& action) {
    auto& slot = dispositions[signal];
    slot.sequence.fetch_add(1, std::memory_order_acq_rel);
    copy_action(action, slot.program);
    slot.sequence.fetch_add(1, std::memory_order_release);
}

struct sigaction our_action(SignalHandler handler) {
    struct sigaction action {};
    action.sa_sigaction = handler;
    // SA_NODEFER: a probe hit inside a handler, or a fault inside one, must
    // reach us again on the same thread without touching the signal mask.
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESTART;
    sigemptyset(&action.sa_mask);
    return action;
}

long raw_sigprocmask(int how, const sigset_t* set, sigset_t* old) {
    return raw_syscall(SYS_rt_sigprocmask, how, reinterpret_cast<long>(set), reinterpret_cast<long>(old),
                       sizeof(unsigned long) * 1 /* the kernel's sigset is 64 bits */);
}

}  // namespace

Result<void> take_signal(int signal, SignalHandler handler) {
    std::lock_guard lock(writers);
    auto& slot = dispositions[signal];
    if (slot.owned.load(std::memory_order_acquire)) return {};
    struct sigaction previous {};
    auto ours = our_action(handler);
    if (real_sigaction()(signal, &ours, &previous) != 0)
        return make_system_error(fmt::format("sigaction({})", ::strsignal(signal)), errno);
    slot.ours = handler;
    write_program_action(signal, previous);
    slot.owned.store(true, std::memory_order_release);
    return {};
}

void deliver_to_program(int signal, siginfo_t* info, void* context, bool is_fault) noexcept {
    struct sigaction action = read_program_action(signal);
    bool ignored = !(action.sa_flags & SA_SIGINFO) && action.sa_handler == SIG_IGN;
    bool fallback = !(action.sa_flags & SA_SIGINFO) && action.sa_handler == SIG_DFL;
    // The kernel does not let a program ignore a fault it caused: it kills it.
    if (ignored && !is_fault) return;
    if (ignored || fallback) {
        struct sigaction default_action {};
        default_action.sa_handler = SIG_DFL;
        real_sigaction()(signal, &default_action, nullptr);
        if (is_fault) return;  // the faulting instruction runs again and ends the process
        raw_tgkill(raw_getpid(), raw_gettid(), signal);
        return;  // only reached if the default action is to ignore
    }
    // As the kernel would: block sa_mask (and the signal itself unless
    // SA_NODEFER) while the program's handler runs.
    sigset_t blocked = action.sa_mask, previous;
    if (!(action.sa_flags & SA_NODEFER)) sigaddset(&blocked, signal);
    raw_sigprocmask(SIG_BLOCK, &blocked, &previous);
    if (action.sa_flags & SA_RESETHAND) {
        struct sigaction reset {};
        reset.sa_handler = SIG_DFL;
        write_program_action(signal, reset);
    }
    if (action.sa_flags & SA_SIGINFO)
        action.sa_sigaction(signal, info, context);
    else
        action.sa_handler(signal);
    raw_sigprocmask(SIG_SETMASK, &previous, nullptr);
}

int check_signal_ownership() noexcept {
    std::lock_guard lock(writers);
    int repaired = 0;
    for (int signal = 1; signal < max_signal; ++signal) {
        auto& slot = dispositions[signal];
        if (!slot.owned.load(std::memory_order_acquire)) continue;
        struct sigaction current {};
        real_sigaction()(signal, nullptr, &current);
        if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == slot.ours) continue;
        write_program_action(signal, current);
        auto ours = our_action(slot.ours);
        real_sigaction()(signal, &ours, nullptr);
        ++repaired;
    }
    return repaired;
}

int sampling_signal() noexcept {
    static const int signal = [] {
        if (const char* configured = std::getenv("UKPROBES_SAMPLING_SIGNAL")) {
            int value = std::atoi(configured);
            if (value >= SIGRTMIN && value <= SIGRTMAX) return value;
        }
        return SIGRTMAX - 2;
    }();
    return signal;
}

std::uint64_t signal_restorer_address() noexcept {
    struct sigaction current {};
    real_sigaction()(SIGTRAP, nullptr, &current);
    return reinterpret_cast<std::uint64_t>(current.sa_restorer);
}

// Interposition: the program's calls land here while we own the signal.
int program_sigaction(int signal, const struct sigaction* action, struct sigaction* previous) {
    if (signal <= 0 || signal >= max_signal || !dispositions[signal].owned.load(std::memory_order_acquire))
        return real_sigaction()(signal, action, previous);
    if (signal == SIGKILL || signal == SIGSTOP) return real_sigaction()(signal, action, previous);
    std::lock_guard lock(writers);
    if (previous) *previous = read_program_action(signal);
    if (action) write_program_action(signal, *action);
    return 0;
}

}  // namespace ukp::os

extern "C" {

UKP_EXPORT int sigaction(int signal, const struct sigaction* action, struct sigaction* previous) {
    return ukp::os::program_sigaction(signal, action, previous);
}

namespace {
sighandler_t install_simple(int signal, sighandler_t handler, int flags) {
    struct sigaction action {}, previous {};
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    if (ukp::os::program_sigaction(signal, &action, &previous) != 0) return SIG_ERR;
    return previous.sa_handler;
}
}  // namespace

// glibc's signal() has BSD semantics: SA_RESTART, handler stays installed.
UKP_EXPORT sighandler_t signal(int signal, sighandler_t handler) {
    return install_simple(signal, handler, SA_RESTART);
}
UKP_EXPORT sighandler_t bsd_signal(int signal, sighandler_t handler) {
    return install_simple(signal, handler, SA_RESTART);
}
UKP_EXPORT sighandler_t sysv_signal(int signal, sighandler_t handler) {
    return install_simple(signal, handler, SA_RESETHAND | SA_NODEFER);
}

}  // extern "C"
