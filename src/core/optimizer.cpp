// Optimizing probes: from int3 to a jump into a trampoline, and back.
//
// Optimizing a batch of points, step by step (registry lock held; every
// point is armed with its breakpoint already, and the cores are synced):
//   1. Decide: the switches allow it, the function's bounds are known, the
//      architecture's analysis of the whole function accepts the displaced
//      code region (DCR), and no other probe point lies inside the DCR.
//   2. Write the trampoline stub, then mark the point Pending.  From now on
//      a thread that hits the breakpoint is sent to the trampoline, which
//      runs the handlers and the whole DCR and returns past it: no thread
//      enters the DCR's interior any more.
//   3. Sync cores, and wait for threads inside the dispatcher: a thread that
//      looked at the point before step 2 may still be sent into its XOL
//      slot, whose copy jumps back into the DCR's interior.
//   4. Sample every thread's program counter.  A point is patched only if
//      no thread is inside its DCR past the first byte or inside its XOL
//      slot; otherwise it stays Pending (hits still take the trampoline)
//      and is tried again at the next registry operation.
//   5. Write bytes 1..4 of the jump (the breakpoint still guards byte 0),
//      sync; write byte 0 (E9), sync.  The point is Optimized.
//
// Unoptimizing (disable, unregister, a new probe inside the DCR, a changed
// handler set):
//   1. Write the breakpoint over the jump's first byte, sync: a thread that
//      arrives traps, and the dispatcher still sends it to the trampoline.
//   2. Write back the original bytes 1..4, sync.
//   Steps 1 and 2 run at the batch's sync, for all the jumps it removes at
//   once (two core syncs per batch, not per point), and before the batch's
//   other text writes: a disarm's original first byte lands only after
//   step 2, so no thread ever sees it in front of the jump's tail.
//   3. Mark the point None: the int3 path takes over.  The stub is retired
//      and freed after a grace period (no thread in it, none in the shared
//      trampoline code, none in the dispatcher).
// Known gap (as for XOL slots): a thread interrupted inside a DCR by a
// signal whose handler is still running shows the handler's PC, so step 4
// cannot see it.
#include <algorithm>
#include <fmt/format.h>

#include "core/engine.hpp"

namespace ukp::core {

void Engine::set_optimization(bool enabled) {
    std::lock_guard lock(lock_);
    optimization_enabled_ = enabled;
    Batch batch;
    std::vector<ProbePoint*> points;
    table.for_each([&](ProbePoint* point) { points.push_back(point); });
    for (ProbePoint* point : points) {
        if (!enabled && point->optimization.load() != Optimization::None)
            unoptimize_locked(*point, batch, "optimization is switched off");
        if (enabled) batch.touched.push_back(point);
    }
    (void)finish_batch_locked(batch);
}

std::size_t Engine::optimize_pending() {
    std::lock_guard lock(lock_);
    complete_optimizations_locked();
    return pending_optimizations_.size();
}

std::string Engine::why_not_optimize_locked(const ProbePoint& point) {
    if (!optimization_enabled_) return "optimization is switched off";
    if (!arch::can_use_trampolines()) return "this CPU cannot run trampolines (no XGETBV with ECX=1)";
    const HandlerList* list = point.handlers.load(std::memory_order_relaxed);
    if (list == nullptr || list->probes.empty()) return "no probe";
    for (const ProbeRecord* record : list->probes)
        if (record->no_optimize) return "a probe asks for no optimization (UKP_NO_OPTIMIZE)";
    return {};
}

bool Engine::has_direct_callers_locked(std::uint64_t function_start) {
    const elf::Module* module = symbols_locked().module_containing(function_start);
    if (module == nullptr) return true;  // unknown code: assume the worst
    auto [entry, inserted] = direct_targets_.try_emplace({module->path, module->bias});
    if (inserted) {
        // In windows, so that a large module is never copied whole; each
        // window reads a few bytes past its end for the instructions that
        // straddle it.  Targets anywhere in the module's code count.
        constexpr std::size_t window = std::size_t{1} << 20, straddle = 8;
        std::uint64_t lowest = UINT64_MAX, highest = 0;
        for (const auto& segment : module->executable_segments) {
            lowest = std::min(lowest, segment.start);
            highest = std::max(highest, segment.end);
        }
        for (const auto& segment : module->executable_segments) {
            for (std::uint64_t at = segment.start; at < segment.end; at += window) {
                const std::size_t length = std::min<std::uint64_t>(window, segment.end - at);
                auto code = read_original_code(at, std::min<std::uint64_t>(length + straddle, segment.end - at));
                auto targets = arch::direct_branch_targets(code, at, length, lowest, highest);
                entry->second.insert(entry->second.end(), targets.begin(), targets.end());
            }
        }
        std::sort(entry->second.begin(), entry->second.end());
        entry->second.erase(std::unique(entry->second.begin(), entry->second.end()), entry->second.end());
    }
    return std::binary_search(entry->second.begin(), entry->second.end(), function_start);
}

void Engine::optimize_locked(std::vector<ProbePoint*> points) {
    std::sort(points.begin(), points.end());
    points.erase(std::unique(points.begin(), points.end()), points.end());
    Batch batch;
    batch.reserve(points.size(), 0);  // a stub per point
    std::vector<ProbePoint*> ready;
    std::vector<std::uint64_t> stubs;
    for (ProbePoint* point : points) {
        // Step 1: decide.
        if (table.find(point->address) != point || !point->armed) continue;
        if (point->optimization.load() != Optimization::None) continue;
        if (auto reason = why_not_optimize_locked(*point); !reason.empty()) {
            point->not_optimized = std::move(reason);
            continue;
        }
        auto function = symbols_locked().function_bounds_containing(point->address);
        if (!function || function->size == 0) {
            point->not_optimized = "no function symbol gives the bounds of the code around the probe";
            continue;
        }
        auto code = read_original_code(function->address, function->size);
        const HandlerList* list = point->handlers.load(std::memory_order_relaxed);
        auto plan = arch::plan_optimization(code, function->address, point->address, point->insn,
                                            list->has_post_handler,
                                            point->address == function->address &&
                                                has_direct_callers_locked(function->address));
        if (!plan) {
            point->not_optimized = std::move(plan.error());
            continue;
        }
        plan->with_return_call = list->has_return_entry && plan->at_function_entry;
        std::uint64_t start = arch::region_start(*plan);
        std::size_t length = arch::region_length(*plan);
        std::string inside;
        for (std::uint64_t address = start + 1; address < start + length && inside.empty(); ++address)
            if (table.find(address)) inside = fmt::format("the probe at {:#x} lies inside the displaced region", address);
        if (!inside.empty()) {
            point->not_optimized = std::move(inside);
            continue;
        }
        // Step 2: the stub, then Pending.
        auto stub = slots.allocate(start, start + length);
        if (!stub) {
            point->not_optimized = stub.error().message;
            continue;
        }
        std::array<std::uint8_t, arch::slot_size> stub_code{};
        if (auto built = arch::build_trampoline(*plan, *stub, point, stub_code); !built) {
            slots.release(*stub);
            point->not_optimized = built.error().message;
            continue;
        }
        batch.write_slot(*stub, stub_code);
        point->optimized = std::move(*plan);
        slots.set_owner(*stub, point);
        ready.push_back(point);
        stubs.push_back(*stub);
    }
    // The stubs must be in memory before anything is sent to them.
    if (auto synced = batch.sync(); !synced) {
        for (std::size_t i = 0; i < ready.size(); ++i) {
            retired_trampolines_.push_back(stubs[i]);
            ready[i]->not_optimized = synced.error().message;
        }
        return;
    }
    // Only now may a thread that hits the breakpoint find the stub: publish
    // its address, then the state that makes the dispatcher use it.
    for (std::size_t i = 0; i < ready.size(); ++i) {
        ProbePoint* point = ready[i];
        point->trampoline.store(stubs[i], std::memory_order_seq_cst);
        point->optimization.store(Optimization::Pending, std::memory_order_seq_cst);
        ++points_with_stubs_;
        point->not_optimized.clear();
    }
    pending_optimizations_.insert(pending_optimizations_.end(), ready.begin(), ready.end());
    complete_optimizations_locked();
}

void Engine::try_completing_optimizations_locked() {
    std::erase_if(pending_optimizations_, [&](ProbePoint* point) {
        return table.find(point->address) != point || point->optimization.load() != Optimization::Pending;
    });
    if (pending_optimizations_.empty()) return;
    // Step 3.
    if (called_from_handler()) return;
    wait_for_dispatchers();
    // Step 4.
    auto pcs = sample_all_thread_pcs();
    if (!pcs) return;
    std::vector<ProbePoint*> clear;
    for (ProbePoint* point : pending_optimizations_) {
        std::uint64_t start = arch::region_start(point->optimized);
        std::uint64_t end = start + arch::region_length(point->optimized);
        bool occupied = std::any_of(pcs->begin(), pcs->end(), [&](std::uint64_t pc) {
            return (pc > start && pc < end) || (pc >= point->slot && pc < point->slot + arch::slot_size);
        });
        if (!occupied) clear.push_back(point);
    }
    if (clear.empty()) return;
    // Step 5.
    Batch batch;
    batch.reserve(0, clear.size());
    std::vector<ProbePoint*> patched;
    patched.reserve(clear.size());
    for (ProbePoint* point : clear) {
        auto jump = arch::optimized_jump(point->optimized, point->trampoline);
        if (!jump) {
            point->not_optimized = jump.error().message;
            continue;
        }
        batch.write_text(point->address + 1, std::span(*jump).subspan(1));
        patched.push_back(point);
    }
    if (auto synced = batch.sync(); !synced) {
        for (ProbePoint* point : patched) point->not_optimized = synced.error().message;
        return;
    }
    for (ProbePoint* point : patched) {
        auto jump = arch::optimized_jump(point->optimized, point->trampoline);
        batch.write_text(point->address, std::span(*jump).first(1));
    }
    if (auto synced = batch.sync(); !synced) {
        for (ProbePoint* point : patched) point->not_optimized = synced.error().message;
        return;
    }
    for (ProbePoint* point : patched) {
        point->optimization.store(Optimization::Optimized, std::memory_order_seq_cst);
        point->not_optimized.clear();
    }
    std::erase_if(pending_optimizations_, [](ProbePoint* point) {
        return point->optimization.load() == Optimization::Optimized;
    });
}

void Engine::complete_optimizations_locked() {
    try_completing_optimizations_locked();
    // Said only of the points that stay Pending: a string per point of a
    // batch costs an allocation each.
    for (ProbePoint* point : pending_optimizations_)
        if (point->not_optimized.empty()) point->not_optimized = "waiting for threads to leave the displaced region";
}

void Engine::unoptimize_locked(ProbePoint& point, Batch& batch, std::string reason) {
    Optimization state = point.optimization.load();
    if (state == Optimization::None || point.removing_jump) return;
    point.not_optimized = std::move(reason);
    if (state == Optimization::Pending) {
        finish_unoptimizing_locked(point);
        return;
    }
    // Steps 1 and 2, at the batch's sync, with every other jump it removes:
    // one sync per step for the batch.  Until then the point stays Optimized,
    // which is what the code still says (read_original_code relies on it).
    point.removing_jump = true;
    batch.remove_jump(point.address, point.optimized.original);
    batch.unoptimizing.push_back(&point);
}

void Engine::finish_unoptimizing_locked(ProbePoint& point) {
    // Step 3.
    point.optimization.store(Optimization::None, std::memory_order_seq_cst);
    --points_with_stubs_;
    std::erase(pending_optimizations_, &point);
    retired_trampolines_.push_back(point.trampoline.load());
}

bool Engine::unoptimize_enclosing_locked(std::uint64_t address, Batch& batch) {
    bool queued = false;
    if (points_with_stubs_ == 0) return queued;
    // A DCR is shorter than 5 + 15 bytes: look back that far for its start.
    for (std::uint64_t back = 1; back < arch::optimized_jump_length + arch::max_insn_length; ++back) {
        if (address < back) break;
        ProbePoint* point = table.find(address - back);
        if (point == nullptr || point->optimization.load() == Optimization::None) continue;
        if (address < point->address + arch::region_length(point->optimized)) {
            queued = queued || point->optimization.load() == Optimization::Optimized;
            unoptimize_locked(*point, batch,
                              fmt::format("the probe at {:#x} lies inside the displaced region", address));
        }
    }
    return queued;
}

}  // namespace ukp::core
