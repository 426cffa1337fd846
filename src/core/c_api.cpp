// The kernel-compatible C front end: struct kprobe over core::ProbeRecord.
#include <cstring>
#include <string>
#include <vector>

#include "core/engine.hpp"
#include "core/front_end.hpp"
#include "core/kretprobe.hpp"
#include "ukprobes/kprobes.h"
#include "ukprobes/ukprobes.hpp"

#define UKP_API __attribute__((visibility("default")))

namespace ukp {
namespace {

thread_local std::string last_error;

core::ProbeRecord* record_of(struct kprobe* probe) {
    return static_cast<core::ProbeRecord*>(probe->ukprobes_private);
}

int call_pre(core::ProbeRecord& record, pt_regs& regs) {
    auto* probe = static_cast<struct kprobe*>(record.front_end);
    return probe->pre_handler(probe, &regs);
}
void call_post(core::ProbeRecord& record, pt_regs& regs, unsigned long flags) {
    auto* probe = static_cast<struct kprobe*>(record.front_end);
    probe->post_handler(probe, &regs, flags);
}
int call_fault(core::ProbeRecord& record, pt_regs& regs, int trap_number) {
    auto* probe = static_cast<struct kprobe*>(record.front_end);
    return probe->fault_handler(probe, &regs, trap_number);
}

int fail(const Error& error) {
    last_error = error.message;
    return -error.to_errno();
}

}  // namespace
}  // namespace ukp

using namespace ukp;

extern "C" {

UKP_API int register_kprobes(struct kprobe** probes, int count) {
    if (probes == nullptr || count <= 0) return fail(Error{Errc::InvalidArgument, "register_kprobes: empty array"});
    std::vector<core::ProbeRecord*> records;
    std::vector<core::ProbeTarget> targets;
    for (int i = 0; i < count; ++i) {
        struct kprobe* probe = probes[i];
        if (probe == nullptr) return fail(Error{Errc::InvalidArgument, "register_kprobes: null entry"});
        core::ProbeRecord* record = record_of(probe);
        if (record != nullptr && record->point != nullptr)
            return fail(Error{Errc::AlreadyRegistered, "register_kprobe: this struct kprobe is registered already"});
        if (record == nullptr) {
            record = new core::ProbeRecord();
            probe->ukprobes_private = record;
        }
        record->front_end = probe;
        record->pre_handler = probe->pre_handler ? call_pre : nullptr;
        record->post_handler = probe->post_handler ? call_post : nullptr;
        record->fault_handler = probe->fault_handler ? call_fault : nullptr;
        record->mirror_nmissed = &probe->nmissed;
        record->enabled.store(!(probe->flags & KPROBE_FLAG_DISABLED));
        record->no_optimize = (probe->flags & UKP_NO_OPTIMIZE) != 0;
        // A struct kretprobe's kp: its stub gets the return call (dispatch.cpp),
        // and its record calls the engine's entry directly, as a C++
        // Kretprobe's does (no thunk, and the dispatcher knows it).
        record->return_entry = probe->pre_handler == detail::c_return_entry;
        record->handler_data = nullptr;
        if (record->return_entry) {
            record->pre_handler = core::return_probe_pre_handler;
            record->handler_data = detail::c_return_probe(probe);
        }
        records.push_back(record);
        targets.push_back({reinterpret_cast<std::uint64_t>(probe->addr),
                           probe->symbol_name ? probe->symbol_name : "", probe->offset});
    }
    auto registered = core::Engine::instance().register_probes(records, targets);
    if (!registered) return fail(registered.error());
    for (int i = 0; i < count; ++i) {
        // As the kernel does: addr is filled in, opcode keeps the original byte.
        probes[i]->addr = reinterpret_cast<kprobe_opcode_t*>(record_of(probes[i])->address);
        probes[i]->opcode = record_of(probes[i])->point->original[0];
    }
    return 0;
}

UKP_API int register_kprobe(struct kprobe* probe) { return register_kprobes(&probe, 1); }

UKP_API void unregister_kprobes(struct kprobe** probes, int count) {
    std::vector<core::ProbeRecord*> records;
    for (int i = 0; i < count; ++i)
        if (probes[i] && record_of(probes[i])) records.push_back(record_of(probes[i]));
    core::Engine::instance().unregister_probes(records);
    // The records stay allocated: counters remain readable and the struct
    // can be registered again.  (The kernel's struct kprobe is reusable too.)
}

UKP_API void unregister_kprobe(struct kprobe* probe) { unregister_kprobes(&probe, 1); }

static int set_enabled(struct kprobe* probe, bool enabled) {
    core::ProbeRecord* record = record_of(probe);
    if (record == nullptr || record->point == nullptr)
        return fail(Error{Errc::InvalidArgument, "the struct kprobe is not registered"});
    if (enabled)
        probe->flags &= ~KPROBE_FLAG_DISABLED;
    else
        probe->flags |= KPROBE_FLAG_DISABLED;
    auto changed = core::Engine::instance().set_enabled(*record, enabled);
    return changed ? 0 : fail(changed.error());
}

UKP_API int enable_kprobe(struct kprobe* probe) { return set_enabled(probe, true); }
UKP_API int disable_kprobe(struct kprobe* probe) { return set_enabled(probe, false); }

UKP_API unsigned long kprobe_nhit(const struct kprobe* probe) {
    auto* record = static_cast<const core::ProbeRecord*>(probe->ukprobes_private);
    return record ? record->nhit() : 0;
}

UKP_API const char* ukprobes_last_error(void) { return last_error.c_str(); }

UKP_API long copy_from_user_nofault(void* dst, const void* src, size_t size) {
    return ukp::read_memory(dst, src, size) ? 0 : -EFAULT;
}

UKP_API long strncpy_from_user_nofault(char* dst, const void* unsafe_addr, long count) {
    if (count <= 0) return 0;
    long length = ukp::read_string(dst, unsafe_addr, static_cast<std::size_t>(count));
    if (length < 0) return -EFAULT;
    // A string cut to count - 1 bytes and one of exactly that length both
    // give count, as in the kernel.
    return length + 1;
}

UKP_API void ukprobes_blacklist_range(unsigned long start, unsigned long end) {
    core::Engine::instance().add_blacklist_range(start, end);
}

UKP_API void ukprobes_blacklist_function(unsigned long address) {
    core::Engine::instance().add_blacklist_function(address);
}

}  // extern "C"
