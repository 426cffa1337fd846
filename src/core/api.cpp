// The C++ front end: ukp::Kprobe over core::ProbeRecord.
#include <fmt/format.h>

#include <cstring>

#include "arch/backend.hpp"
#include "core/engine.hpp"
#include "core/front_end.hpp"
#include "core/thread_state.hpp"
#include "ukprobes/ukprobes.hpp"

#define UKP_API __attribute__((visibility("default")))

namespace ukp {

namespace detail {
struct ProbeState {
    core::ProbeRecord record;
    Kprobe* owner = nullptr;
    // Instead of calling the Kprobe's std::function: the engine's own
    // handler, called directly (core/front_end.hpp).
    core::PreHandlerFn internal_pre_handler = nullptr;
};
}  // namespace detail

namespace {

int call_pre(core::ProbeRecord& record, pt_regs& regs) {
    auto* probe = static_cast<Kprobe*>(record.front_end);
    return probe->pre_handler(*probe, regs);
}
void call_post(core::ProbeRecord& record, pt_regs& regs, unsigned long flags) {
    auto* probe = static_cast<Kprobe*>(record.front_end);
    probe->post_handler(*probe, regs, flags);
}
int call_fault(core::ProbeRecord& record, pt_regs& regs, int trap_number) {
    auto* probe = static_cast<Kprobe*>(record.front_end);
    return probe->fault_handler(*probe, regs, trap_number);
}

detail::ProbeState& created_state(Kprobe& probe) {
    if (probe.registration.state == nullptr) {
        probe.registration.state = new detail::ProbeState();
        probe.registration.state->owner = &probe;
    }
    return *probe.registration.state;
}

// The state with its record's handlers as the Kprobe has them now.
detail::ProbeState& state_of(Kprobe& probe) {
    auto& state = created_state(probe);
    auto& record = state.record;
    record.front_end = &probe;
    record.pre_handler = state.internal_pre_handler ? state.internal_pre_handler
                         : probe.pre_handler        ? call_pre
                                                    : nullptr;
    record.post_handler = probe.post_handler ? call_post : nullptr;
    record.fault_handler = probe.fault_handler ? call_fault : nullptr;
    return state;
}

core::ProbeTarget target_of(const Kprobe& probe) {
    return {reinterpret_cast<std::uint64_t>(probe.addr), probe.symbol_name, probe.offset};
}

void after_registration(Kprobe& probe) {
    auto& record = probe.registration.state->record;
    probe.addr = reinterpret_cast<void*>(record.address);
    // Like the kernel, resolving a symbol fills addr; keep the symbol as the
    // source of truth for a later re-registration.
    if (!probe.symbol_name.empty()) probe.addr = reinterpret_cast<void*>(record.address);
}

}  // namespace

void detail::set_return_entry_handler(Kprobe& probe, core::PreHandlerFn handler, void* data) {
    auto& state = created_state(probe);
    state.internal_pre_handler = handler;
    state.record.handler_data = data;
    state.record.return_entry = handler != nullptr;
    (void)state_of(probe);
}

UKP_API detail::Registration::~Registration() {
    if (state == nullptr) return;
    if (state->record.point != nullptr) {
        // Destroying a registered probe: unregister rather than leave the
        // engine with a dangling record.
        core::ProbeRecord* record = &state->record;
        core::Engine::instance().unregister_probes(std::span(&record, 1));
    }
    delete state;
}

UKP_API std::uint64_t Kprobe::nhit() const noexcept {
    return registration.state ? registration.state->record.nhit() : 0;
}
UKP_API std::uint64_t Kprobe::nmissed() const noexcept {
    return registration.state ? registration.state->record.nmissed.load(std::memory_order_relaxed) : 0;
}
UKP_API std::uint64_t Kprobe::nfault() const noexcept {
    return registration.state ? registration.state->record.nfault.load(std::memory_order_relaxed) : 0;
}
UKP_API bool Kprobe::is_registered() const noexcept {
    return registration.state && registration.state->record.point != nullptr;
}
UKP_API bool Kprobe::is_enabled() const noexcept {
    return registration.state ? registration.state->record.enabled.load() : !(flags & flag_disabled);
}
UKP_API void* Kprobe::address() const noexcept {
    return registration.state ? reinterpret_cast<void*>(registration.state->record.address) : nullptr;
}

UKP_API Result<void> register_kprobes(std::span<Kprobe* const> probes) {
    std::vector<core::ProbeRecord*> records;
    std::vector<core::ProbeTarget> targets;
    for (Kprobe* probe : probes) {
        // A probe whose symbol was resolved before keeps resolving by symbol.
        core::ProbeTarget target = target_of(*probe);
        if (probe->registration.state && probe->registration.state->record.point == nullptr &&
            !probe->symbol_name.empty())
            target.address = 0;
        if (probe->is_registered())
            return make_error(Errc::AlreadyRegistered,
                              fmt::format("probe at {} is registered already", probe->address()));
        auto& state = state_of(*probe);
        state.record.enabled.store(!(probe->flags & flag_disabled));
        state.record.no_optimize = (probe->flags & flag_no_optimize) != 0;
        records.push_back(&state.record);
        targets.push_back(std::move(target));
    }
    auto registered = core::Engine::instance().register_probes(records, targets);
    if (registered)
        for (Kprobe* probe : probes) after_registration(*probe);
    return registered;
}

UKP_API Result<void> register_kprobe(Kprobe& probe) {
    Kprobe* one = &probe;
    return register_kprobes(std::span(&one, 1));
}

UKP_API void unregister_kprobes(std::span<Kprobe* const> probes) {
    std::vector<core::ProbeRecord*> records;
    for (Kprobe* probe : probes)
        if (probe->registration.state) records.push_back(&probe->registration.state->record);
    core::Engine::instance().unregister_probes(records);
}

UKP_API void unregister_kprobe(Kprobe& probe) {
    Kprobe* one = &probe;
    unregister_kprobes(std::span(&one, 1));
}

UKP_API Result<void> enable_kprobe(Kprobe& probe) {
    if (!probe.is_registered()) return make_error(Errc::NotRegistered, "enable_kprobe: the probe is not registered");
    probe.flags &= ~flag_disabled;
    return core::Engine::instance().set_enabled(probe.registration.state->record, true);
}

UKP_API Result<void> disable_kprobe(Kprobe& probe) {
    if (!probe.is_registered()) return make_error(Errc::NotRegistered, "disable_kprobe: the probe is not registered");
    probe.flags |= flag_disabled;
    return core::Engine::instance().set_enabled(probe.registration.state->record, false);
}

UKP_API std::vector<ProbeInfo> list_probes() {
    std::vector<ProbeInfo> result;
    for (auto& entry : core::Engine::instance().list())
        result.push_back({entry.address, entry.where, entry.kind, entry.not_optimized, entry.instruction,
                          entry.enabled, entry.nhit, entry.nmissed, entry.nfault});
    return result;
}

UKP_API std::string format_probe_list() {
    std::string text;
    for (const auto& probe : list_probes())
        text += fmt::format("{:016x}  k  {}  {}{}{}  hits={} missed={} faults={}  ({}){}\n", probe.address,
                            probe.where, probe.kind, probe.kind == "optimized" ? "  [OPTIMIZED]" : "",
                            probe.enabled ? "" : "  [DISABLED]", probe.nhit, probe.nmissed, probe.nfault,
                            probe.instruction,
                            probe.not_optimized.empty() ? "" : "  not optimized: " + probe.not_optimized);
    return text;
}

UKP_API Result<std::vector<FunctionSymbol>> find_functions(std::string_view module, std::string_view pattern) {
    auto found = core::Engine::instance().find_functions(module, pattern);
    if (!found) return std::unexpected(found.error());
    std::vector<FunctionSymbol> functions;
    functions.reserve(found->size());
    for (auto& symbol : *found)
        functions.push_back({std::move(symbol.name), std::move(symbol.module), symbol.address, symbol.size});
    return functions;
}

UKP_API bool probed_vector_register(unsigned index, void* out) noexcept {
    const core::ThreadRecord* record = core::this_thread_record_if_any();
    if (record == nullptr || record->vector_view == nullptr || index >= record->vector_view->count) return false;
    const auto& view = *record->vector_view;
    // Called from handlers: a fixed-size builtin copy, not a call into libc
    // (whose memcpy a user may be probing).
    __builtin_memcpy(out, view.base + static_cast<std::size_t>(index) * view.stride, 16);
    return true;
}

namespace {
bool fault_handlers_ready() noexcept {
    auto& engine = core::Engine::instance();
    if (engine.ready.load(std::memory_order_acquire)) return true;
    return static_cast<bool>(engine.initialize());
}
}  // namespace

UKP_API bool read_memory(void* out, const void* address, std::size_t size) noexcept {
    if (!fault_handlers_ready()) return false;
    return arch::copy_nofault(out, address, size) == 0;
}

UKP_API long read_string(char* out, const void* address, std::size_t size) noexcept {
    if (size == 0) return -1;
    if (!fault_handlers_ready()) {
        out[0] = '\0';
        return -1;
    }
    long length = arch::string_copy_nofault(out, address, size);
    if (length < 0) {
        std::size_t copied = static_cast<std::size_t>(~length);
        out[copied < size ? copied : size - 1] = '\0';
        return -1;
    }
    if (static_cast<std::size_t>(length) == size) {
        out[size - 1] = '\0';
        return static_cast<long>(size - 1);
    }
    return length;
}

UKP_API void blacklist_range(std::uint64_t start, std::uint64_t end) {
    core::Engine::instance().add_blacklist_range(start, end);
}

UKP_API void set_handler_fault_policy(HandlerFaultPolicy policy) {
    core::Engine::instance().handler_fault_policy.store(policy == HandlerFaultPolicy::Abort
                                                            ? core::HandlerFaultPolicy::Abort
                                                            : core::HandlerFaultPolicy::Recover);
}

UKP_API std::size_t reclaim_retired_probes() { return core::Engine::instance().reclaim(); }

UKP_API void set_optimization(bool enabled) { core::Engine::instance().set_optimization(enabled); }

UKP_API std::size_t optimize_pending_probes() { return core::Engine::instance().optimize_pending(); }

}  // namespace ukp
