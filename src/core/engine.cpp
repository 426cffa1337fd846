// The registry: placing, arming, disarming and removing probes.
//
// Registration of a batch, step by step (registry lock held throughout):
//   1. Resolve each target to an address; refuse addresses that are not
//      executable, blacklisted, or not on an instruction boundary.
//   2. For a new address, decode and classify the instruction from its
//      original bytes, write its out-of-line slot, and publish the point in
//      the table.  The slot is complete before the point is visible, and the
//      point is visible before any breakpoint leads a thread to it.
//   3. Arm: write the breakpoint byte.  One core sync for the whole batch
//      makes every thread see every breakpoint before we return.
//   A failure in any record unregisters the ones already done.
//
// Unregistration of a batch:
//   1. Publish each point's handler list without the record.  A point left
//      with no enabled record is disarmed (the original byte written back).
//   2. One core sync: no thread executes a stale breakpoint after this...
//   3. ...so points without records leave the table; a thread that trapped
//      before step 1 and reaches the dispatcher only now finds no point and
//      restarts the instruction (RecentlyDisarmed).
//   4. Wait for every thread inside the dispatcher to leave it: afterwards
//      no handler of the removed records runs, and old lists can be freed.
//   5. Points (and their slots) are freed once no thread's program counter
//      is inside the slot; until then they wait in retired_points_.
#include "core/engine.hpp"

#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <fmt/format.h>

#include "core/thread_state.hpp"
#include "os/linux/memory.hpp"
#include "os/linux/signals.hpp"

namespace ukp::core {

void RecentlyDisarmed::add(std::uint64_t address) noexcept {
    std::size_t index = next_.fetch_add(1, std::memory_order_relaxed) % capacity;
    addresses_[index].store(address, std::memory_order_seq_cst);
}

bool RecentlyDisarmed::contains(std::uint64_t address) const noexcept {
    for (const auto& entry : addresses_)
        if (entry.load(std::memory_order_relaxed) == address) return true;
    return false;
}

Result<void> Engine::Batch::flush(std::vector<Write>& writes) {
    if (writes.empty()) return {};
    if (!writer_) {
        auto opened = os::CodeWriter::open();
        if (!opened) return std::unexpected(opened.error());
        writer_.emplace(std::move(*opened));
    }
    // Split at page boundaries and group by page, keeping queue order: a
    // stable sort of the pieces by page (queues are mostly in address order
    // already, as slots are handed out bottom up).
    struct Piece {
        std::uint64_t page_start;
        std::uint64_t at;
        std::span<const std::uint8_t> bytes;
    };
    const std::uint64_t page = os::page_size();
    std::vector<Piece> pieces;
    pieces.reserve(writes.size() + writes.size() / 8 + 1);
    for (const auto& write : writes) {
        std::span<const std::uint8_t> rest(write.bytes.data(), write.length);
        for (std::uint64_t at = write.address; !rest.empty();) {
            std::uint64_t page_start = at / page * page;
            std::size_t here = std::min<std::size_t>(rest.size(), page_start + page - at);
            pieces.push_back({page_start, at, rest.first(here)});
            rest = rest.subspan(here);
            at += here;
        }
    }
    auto by_page = [](const Piece& a, const Piece& b) { return a.page_start < b.page_start; };
    if (!std::is_sorted(pieces.begin(), pieces.end(), by_page))
        std::stable_sort(pieces.begin(), pieces.end(), by_page);
    std::vector<std::uint8_t> span;
    for (auto first = pieces.begin(); first != pieces.end();) {
        auto last = std::find_if(first, pieces.end(),
                                 [&](const Piece& piece) { return piece.page_start != first->page_start; });
        std::uint64_t low = UINT64_MAX, high = 0;
        for (auto piece = first; piece != last; ++piece) {
            low = std::min(low, piece->at);
            high = std::max(high, piece->at + piece->bytes.size());
        }
        // The bytes between writes are what is there now: code only changes
        // under the registry lock, which we hold.
        span.resize(high - low);
        std::memcpy(span.data(), reinterpret_cast<const void*>(low), span.size());
        for (auto piece = first; piece != last; ++piece)
            std::memcpy(span.data() + (piece->at - low), piece->bytes.data(), piece->bytes.size());
        if (auto written = writer_->write(low, span); !written) return written;
        first = last;
    }
    writes.clear();
    changed_ = unsynced_ = true;
    return {};
}

void Engine::Batch::remove_jump(std::uint64_t address, std::span<const std::uint8_t> original) {
    queue(jump_heads_, address, arch::breakpoint_bytes);
    queue(jump_tails_, address + 1, original.subspan(1, arch::optimized_jump_length - 1));
    removed_jumps_.push_back(address);
}

Result<void> Engine::Batch::sync_cores() {
    if (!unsynced_) return {};
    unsynced_ = false;
    return os::sync_all_cores();
}

Result<void> Engine::Batch::write_jump_removals() {
    if (jump_heads_.empty()) return {};
    // The tails must not land before every thread sees the breakpoints, and
    // the batch's other text (a disarm's original first byte) not before
    // every thread sees the tails.
    if (auto flushed = flush(jump_heads_); !flushed) return flushed;
    if (auto synced = sync_cores(); !synced) return synced;
    if (auto flushed = flush(jump_tails_); !flushed) return flushed;
    return sync_cores();
}

Result<void> Engine::Batch::sync() {
    auto written = flush(slot_writes_);
    if (written) written = write_jump_removals();
    if (!written) {
        // Any jump this batch was removing may still be whole, and a later
        // write over one would tear it: drop those writes, and the removals
        // (their points stay armed and optimized, sync_locked).
        std::erase_if(text_writes_, [&](const Write& write) {
            return std::any_of(removed_jumps_.begin(), removed_jumps_.end(), [&](std::uint64_t jump) {
                return write.address < jump + arch::optimized_jump_length && jump < write.address + write.length;
            });
        });
        jump_heads_.clear();
        jump_tails_.clear();
        removed_jumps_.clear();
        return written;
    }
    removed_jumps_.clear();
    if (auto flushed = flush(text_writes_); !flushed) return flushed;
    return sync_cores();
}

Result<void> Engine::sync_locked(Batch& batch) {
    auto synced = batch.sync();
    for (ProbePoint* point : batch.unoptimizing) {
        point->removing_jump = false;
        if (synced)
            finish_unoptimizing_locked(*point);
        else
            point->armed = true;  // its jump, or the breakpoint over it, is still there
    }
    batch.unoptimizing.clear();
    return synced;
}

Engine& Engine::instance() {
    // Never destroyed: threads may trap during static destruction.
    static Engine* engine = new Engine();
    return *engine;
}

namespace {

void lock_registry_for_fork() { Engine::instance().registry_lock().lock(); }
void unlock_registry_in_parent() { Engine::instance().registry_lock().unlock(); }
void unlock_registry_in_child() {
    adopt_records_after_fork();
    Engine::instance().registry_lock().unlock();
}

std::string hex(std::uint64_t value) { return fmt::format("{:#x}", value); }

unsigned long long loaded_modules_generation() {
    unsigned long long generation = 0;
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t size, void* data) -> int {
            if (size >= offsetof(dl_phdr_info, dlpi_subs) + sizeof(info->dlpi_subs))
                *static_cast<unsigned long long*>(data) = info->dlpi_adds * 1000003ull + info->dlpi_subs;
            return 1;  // the counters are global: the first module is enough
        },
        &generation);
    return generation;
}

// "parse_port(char const*, unsigned long)" rather than "_Z10parse_portPKcm".
std::string demangle(const std::string& name) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> readable(abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status),
                                                    std::free);
    return status == 0 && readable ? std::string(readable.get()) : name;
}

Result<std::uint64_t> resolve_ifunc(const elf::Symbol& symbol) {
    void* handle = dlopen(symbol.module_path.empty() ? nullptr : symbol.module_path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    // The executable is not found by its path; its handle is dlopen(NULL).
    if (handle == nullptr) handle = dlopen(nullptr, RTLD_LAZY);
    if (handle == nullptr)
        return make_error(Errc::UnknownModule, fmt::format("cannot reopen '{}' to resolve IFUNC '{}'",
                                                           symbol.module, symbol.name));
    void* implementation = dlsym(handle, symbol.name.c_str());
    dlclose(handle);
    if (implementation == nullptr)
        return make_error(Errc::UnknownSymbol,
                          fmt::format("IFUNC '{}' in '{}' did not resolve", symbol.name, symbol.module));
    return reinterpret_cast<std::uint64_t>(implementation);
}

}  // namespace

Result<void> Engine::initialize_locked() {
    if (initialized_) return {};
    if (auto installed = install_trap_handlers(); !installed) return installed;
    // Blacklist our own code: a probe there would trap inside the trap path.
    {
        const auto& index = symbols_locked();
        if (const auto* module = index.module_containing(reinterpret_cast<std::uint64_t>(&install_trap_handlers))) {
            bool linked_into_executable = module == &index.modules().front();
            if (!linked_into_executable) {
                for (const auto& segment : module->executable_segments)
                    own_code_.emplace_back(segment.start, segment.end);
            } else if (auto ours = index.match_functions(module->name, "*3ukp*"); ours) {
                // Linked statically: only our functions, not the program's.
                for (const auto& symbol : *ours)
                    own_code_.emplace_back(symbol.address, symbol.address + std::max<std::uint64_t>(symbol.size, 1));
            }
            blacklist_.insert(blacklist_.end(), own_code_.begin(), own_code_.end());
        }
    }
    // glibc's __restore_rt: every signal handler returns through it.  It is
    // also "our code" for grace periods: a thread there resumes wherever its
    // signal frame says, possibly in a slot.
    if (std::uint64_t restorer = os::signal_restorer_address()) {
        blacklist_.emplace_back(restorer, restorer + 16);
        own_code_.emplace_back(restorer, restorer + 16);
    }
    pthread_atfork(lock_registry_for_fork, unlock_registry_in_parent, unlock_registry_in_child);
    initialized_ = true;
    ready.store(true, std::memory_order_release);
    return {};
}

const elf::SymbolIndex& Engine::symbols_locked() {
    auto generation = loaded_modules_generation();
    if (!symbols_ || generation != symbols_generation_) {
        auto snapshot = elf::SymbolIndex::snapshot();
        if (snapshot) {
            symbols_.emplace(std::move(*snapshot));
            symbols_generation_ = generation;
        }
    }
    return *symbols_;
}

Result<std::uint64_t> Engine::resolve(const ProbeTarget& target) {
    std::lock_guard lock(lock_);
    return resolve_locked(target);
}

Result<std::uint64_t> Engine::resolve_locked(const ProbeTarget& target) {
    if (target.address != 0 && !target.symbol.empty())
        return make_error(Errc::InvalidArgument,
                          fmt::format("probe names both address {} and symbol '{}'", hex(target.address), target.symbol));
    if (target.address != 0) return target.address + target.offset;
    if (target.symbol.empty()) return make_error(Errc::InvalidArgument, "probe names neither an address nor a symbol");

    std::string_view module, name = target.symbol;
    if (auto colon = name.rfind(':'); colon != std::string_view::npos) {
        module = name.substr(0, colon);
        name = name.substr(colon + 1);
    }
    auto symbol = symbols_locked().find_function(module, name);
    if (!symbol) return std::unexpected(symbol.error());
    if (symbol->is_ifunc) {
        // Probe what calls run, not the resolver: ask the dynamic linker
        // which implementation it bound, as dlsym() does.
        auto implementation = resolve_ifunc(*symbol);
        if (!implementation) return std::unexpected(implementation.error());
        if (target.offset != 0)
            return make_error(Errc::InvalidArgument,
                              fmt::format("'{}' is an IFUNC; its implementation's size is unknown, so only "
                                          "offset 0 can be checked",
                                          target.symbol));
        return *implementation;
    }
    if (symbol->size != 0 && target.offset >= symbol->size)
        return make_error(Errc::InvalidArgument,
                          fmt::format("offset {} is beyond the end of '{}' ({} bytes)", hex(target.offset),
                                      target.symbol, symbol->size));
    return symbol->address + target.offset;
}

std::vector<std::uint8_t> Engine::read_original_code(std::uint64_t address, std::size_t length,
                                                     std::size_t undone) const {
    std::vector<std::uint8_t> code(length);
    // Inside a module's executable segment the bytes are mapped and
    // readable: copy them directly, up to the segment's end.  Elsewhere read
    // what is readable without risking a fault (one system call).
    const elf::Segment* segment = nullptr;
    if (symbols_)
        if (const auto* module = symbols_->module_containing(address))
            for (const auto& candidate : module->executable_segments)
                if (address >= candidate.start && address < candidate.end) segment = &candidate;
    if (segment) {
        code.resize(std::min<std::uint64_t>(length, segment->end - address));
        std::memcpy(code.data(), reinterpret_cast<const void*>(address), code.size());
    } else {
        std::size_t readable = length;
        while (readable > 0 && !os::safe_read(address, code.data(), readable)) --readable;
        code.resize(readable);
    }
    // Our breakpoints and jumps are not the program's code: put the original
    // bytes back.  Only bytes that could be ours need a table lookup.
    for (std::size_t i = 0; i < std::min(code.size(), undone); ++i) {
        if (code[i] != arch::breakpoint_bytes[0] && code[i] != arch::optimized_jump_first_byte) continue;
        const ProbePoint* other = table.find(address + i);
        if (other == nullptr) continue;
        if (other->optimization.load() == Optimization::Optimized) {
            for (std::size_t j = 0; j < arch::optimized_jump_length && i + j < code.size(); ++j)
                code[i + j] = other->optimized.original[j];
        } else if (other->armed) {
            code[i] = other->original[0];
        }
    }
    return code;
}

bool Engine::is_blacklisted(std::uint64_t address, std::size_t length) {
    for (auto [start, end] : blacklist_)
        if (address < end && address + length > start) return true;
    for (std::uint64_t inside : blacklisted_functions_) {
        auto function = symbols_locked().function_bounds_containing(inside);
        std::uint64_t start = function ? function->address : inside;
        std::uint64_t end = function ? start + std::max<std::uint64_t>(function->size, 1) : inside + 1;
        if (address < end && address + length > start) return true;
    }
    return false;
}

void Engine::add_blacklist_function(std::uint64_t address) {
    std::lock_guard lock(lock_);
    blacklisted_functions_.push_back(address);
}

Result<std::vector<elf::Symbol>> Engine::find_functions(std::string_view module, std::string_view pattern) {
    std::lock_guard lock(lock_);
    return symbols_locked().match_functions(module, pattern);
}

void Engine::add_blacklist_range(std::uint64_t start, std::uint64_t end) {
    std::lock_guard lock(lock_);
    blacklist_.emplace_back(start, end);
}

Result<void> Engine::check_probe_address_locked(std::uint64_t address) {
    // Module code is checked against its executable segments; only other
    // addresses (JIT code, anonymous mappings) need /proc/self/maps, which
    // costs tens of microseconds to read.
    bool in_module = symbols_locked().module_containing(address) != nullptr;
    auto executable = in_module ? Result<bool>(true) : elf::is_executable_range(address, 1);
    if (!executable) return std::unexpected(executable.error());
    if (!*executable)
        return make_error(Errc::NotExecutable, fmt::format("address {} is not in an executable mapping", hex(address)));
    if (is_blacklisted(address, 1))
        return make_error(Errc::Blacklisted,
                          fmt::format("address {} is blacklisted (ukprobes' own code, the signal return path, "
                                      "or a range added with blacklist_range)",
                                      hex(address)));
    // As tracefs does for sym+offs: decode from the function's start.
    // A function's first byte is a boundary by definition: no decode needed.
    if (auto function = symbols_locked().function_bounds_containing(address);
        function && function->size != 0 && function->address != address) {
        auto code = read_original_code(function->address, address - function->address + arch::max_insn_length);
        auto boundary = arch::check_boundary(code, function->address, address);
        if (!boundary) {
            auto error = boundary.error();
            auto named = symbols_locked().function_containing(address);
            error.message = fmt::format("{}+{:#x} ({}): {}", named ? named->name : hex(function->address),
                                        address - function->address, hex(address), error.message);
            return std::unexpected(error);
        }
    }
    return {};
}

bool Engine::may_be_ours(std::span<const std::uint8_t> code) {
    return std::any_of(code.begin(), code.end(), [](std::uint8_t byte) {
        return byte == arch::breakpoint_bytes[0] || byte == arch::optimized_jump_first_byte;
    });
}

Result<ProbePoint*> Engine::create_point_locked(std::uint64_t address, Batch& batch) {
    // Only the probed instruction's own bytes matter, but where it ends is
    // known only once it is decoded: decode with the first byte undone, and
    // again with all of them when one of the instruction's later bytes may
    // be a breakpoint or jump of ours.  (The padding after a function is
    // often 0xCC, a table lookup per byte.)
    auto code = read_original_code(address, arch::max_insn_length, 1);
    auto prepared = arch::prepare_insn(address, code);
    if (!prepared || may_be_ours(std::span(code).subspan(1, arch::insn_length(*prepared) - 1))) {
        code = read_original_code(address, arch::max_insn_length);
        prepared = arch::prepare_insn(address, code);
    }
    if (!prepared) return std::unexpected(prepared.error());
    auto length = arch::insn_length(*prepared);

    auto slot = slots.allocate(address, address + length);
    if (!slot) return std::unexpected(slot.error());
    std::array<std::uint8_t, arch::slot_size> slot_code{};
    if (auto built = arch::build_slot(*prepared, *slot, slot_code); !built) {
        slots.release(*slot);
        return std::unexpected(built.error());
    }
    batch.write_slot(*slot, slot_code);
    auto* point = new ProbePoint();
    point->address = address;
    std::copy_n(code.begin(), std::min<std::size_t>(length, point->original.size()), point->original.begin());
    point->insn = *prepared;
    point->slot = *slot;
    slots.set_owner(*slot, point);
    return point;
}

void Engine::publish_handlers_locked(ProbePoint& point, std::vector<ProbeRecord*> probes, Batch& batch) {
    auto list = std::make_unique<HandlerList>();
    list->probes = std::move(probes);
    list->has_post_handler = std::any_of(list->probes.begin(), list->probes.end(),
                                         [](const ProbeRecord* probe) { return probe->post_handler != nullptr; });
    if (list->probes.size() == 1 && list->probes.front()->pre_handler != nullptr) list->only_pre = list->probes.front();
    list->has_return_entry = std::any_of(list->probes.begin(), list->probes.end(),
                                         [](const ProbeRecord* probe) { return probe->return_entry; });
    bool has_post = list->has_post_handler;
    bool return_call = list->has_return_entry && point.optimized.at_function_entry;
    const HandlerList* previous = point.handlers.exchange(list.release(), std::memory_order_seq_cst);
    if (previous) retired_lists_.emplace_back(previous);
    // The stub calls the post body or not, and has the return call or not:
    // rebuild it when that changed.
    if (point.optimization.load() != Optimization::None &&
        (point.optimized.with_post_handler != has_post || point.optimized.with_return_call != return_call)) {
        unoptimize_locked(point, batch, "its handlers changed");
        batch.touched.push_back(&point);
    }
}

Result<void> Engine::update_arming_locked(ProbePoint& point, Batch& batch) {
    const HandlerList* list = point.handlers.load(std::memory_order_relaxed);
    bool wanted = list && std::any_of(list->probes.begin(), list->probes.end(), [](const ProbeRecord* probe) {
                      return probe->enabled.load(std::memory_order_relaxed);
                  });
    if (wanted == point.armed) return {};
    if (wanted) {
        batch.write_text(point.address, arch::breakpoint_bytes);
    } else {
        // A jump cannot be turned back into the original byte directly: the
        // batch removes it first, and writes this byte after.
        unoptimize_locked(point, batch, "disarmed");
        batch.write_text(point.address, std::span(point.original.data(), arch::breakpoint_bytes.size()));
        recently_disarmed.add(point.address);
    }
    point.armed = wanted;
    return {};
}

Result<void> Engine::register_one_locked(ProbeRecord& record, const ProbeTarget& target, Batch& batch) {
    if (record.point != nullptr)
        return make_error(Errc::AlreadyRegistered, fmt::format("probe at {} ({}) is registered already",
                                                               hex(record.address),
                                                               describe_address_locked(record.address)));
    auto address = resolve_locked(target);
    if (!address) return std::unexpected(address.error());
    // A probe inside another's displaced region: that one goes back to int3
    // first, so the bytes read below are the program's.
    if (unoptimize_enclosing_locked(*address, batch))
        if (auto synced = sync_locked(batch); !synced) return synced;
    if (auto checked = check_probe_address_locked(*address); !checked) return checked;

    ProbePoint* point = table.find(*address);
    bool created = point == nullptr;
    if (created) {
        auto made = create_point_locked(*address, batch);
        if (!made) return std::unexpected(made.error());
        point = *made;
    }
    std::vector<ProbeRecord*> probes;
    if (const HandlerList* list = point->handlers.load(std::memory_order_relaxed)) probes = list->probes;
    probes.push_back(&record);
    publish_handlers_locked(*point, std::move(probes), batch);
    if (created)
        if (auto replaced = table.insert(*address, point)) retired_arrays_.push_back(std::move(replaced));

    batch.touched.push_back(point);
    record.point = point;
    record.address = *address;
    record.where.clear();  // described lazily, when listed
    return update_arming_locked(*point, batch);
}

void Engine::unregister_one_locked(ProbeRecord& record, Batch& batch) {
    ProbePoint* point = record.point;
    if (point == nullptr) return;
    std::vector<ProbeRecord*> probes = point->handlers.load(std::memory_order_relaxed)->probes;
    std::erase(probes, &record);
    bool last = probes.empty();
    publish_handlers_locked(*point, std::move(probes), batch);
    // A failed write leaves the breakpoint in place; the point then stays in
    // the table with no records, which is harmless (hits run no handler).
    if (update_arming_locked(*point, batch) && last) {
        batch.points_to_remove.push_back(point);
        // A probe whose displaced region held this one may be optimized now.
        for (std::uint64_t back = 1; back < arch::optimized_jump_length + arch::max_insn_length; ++back)
            if (back <= point->address)
                if (ProbePoint* enclosing = table.find(point->address - back)) batch.touched.push_back(enclosing);
    }
    if (!last) batch.touched.push_back(point);
    record.point = nullptr;
}

Result<void> Engine::finish_batch_locked(Batch& batch) {
    Result<void> synced = sync_locked(batch);
    for (ProbePoint* point : batch.points_to_remove) {
        // Its jump could not be removed: it stays, with no records.
        if (point->armed) continue;
        table.remove(point->address);
        retired_points_.push_back(point);
    }
    batch.points_to_remove.clear();
    if (!retired_lists_.empty() || !retired_arrays_.empty() || !retired_points_.empty() ||
        !retired_trampolines_.empty())
        reclaim_locked();
    if (synced && (!batch.touched.empty() || !pending_optimizations_.empty()))
        optimize_locked(std::move(batch.touched));
    return synced;
}

std::size_t Engine::reclaim_locked() {
    // A handler that unregisters probes is itself inside the dispatcher and
    // may still be walking a list or a point we would free: leave it all for
    // an operation made from outside a handler.
    if (called_from_handler()) return retired_points_.size() + retired_trampolines_.size();
    wait_for_dispatchers();
    retired_lists_.clear();
    retired_arrays_.clear();
    if (retired_points_.empty() && retired_trampolines_.empty()) return 0;

    release_exited_thread_records();
    // A thread reaches a stub through the jump without ever trapping, so it
    // may have no record: stubs need every thread's PC.  XOL slots are only
    // reached from the dispatcher, so threads with records suffice for them.
    auto pcs = retired_trampolines_.empty() ? sample_thread_pcs() : sample_all_thread_pcs();
    if (!pcs) return retired_points_.size() + retired_trampolines_.size();
    // A thread in the shared trampoline code, in our own code outside the
    // dispatcher's count (the trampoline's C entry before it counts itself,
    // the signal handler after it stopped counting), or in the signal
    // restorer (its saved context may resume in any slot or stub): any of
    // them may be on its way into any slot or stub, so nothing is freed
    // while one is there.
    bool in_our_code = std::any_of(pcs->begin(), pcs->end(), [&](std::uint64_t pc) {
        return arch::is_in_trampoline_code(pc) || is_own_code(pc);
    });
    auto occupied = [&](std::uint64_t start) {
        return std::any_of(pcs->begin(), pcs->end(),
                           [&](std::uint64_t pc) { return pc >= start && pc < start + arch::slot_size; });
    };
    std::erase_if(retired_trampolines_, [&](std::uint64_t stub) {
        if (in_our_code || occupied(stub)) return false;
        slots.release(stub);
        return true;
    });
    std::erase_if(retired_points_, [&](ProbePoint* point) {
        if (in_our_code || occupied(point->slot)) return false;
        bool named_by_a_stub = std::any_of(retired_trampolines_.begin(), retired_trampolines_.end(),
                                           [&](std::uint64_t stub) { return slots.owner_of(stub, nullptr) == point; });
        if (named_by_a_stub) return false;
        slots.release(point->slot);
        delete point->handlers.load(std::memory_order_relaxed);
        delete point;
        return true;
    });
    return retired_points_.size() + retired_trampolines_.size();
}

bool Engine::is_own_code(std::uint64_t pc) const {
    return std::any_of(own_code_.begin(), own_code_.end(),
                       [&](const auto& range) { return pc >= range.first && pc < range.second; });
}

Result<void> Engine::initialize() {
    std::lock_guard lock(lock_);
    return initialize_locked();
}

std::size_t Engine::reclaim() {
    std::lock_guard lock(lock_);
    return reclaim_locked();
}

void Engine::forget_unmapped_code(std::uint64_t start, std::uint64_t end) {
    std::lock_guard lock(lock_);
    std::vector<ProbePoint*> gone;
    table.for_each([&](ProbePoint* point) {
        if (point->address >= start && point->address < end) gone.push_back(point);
    });
    if (gone.empty()) return;
    for (ProbePoint* point : gone) {
        // Nothing is written: the bytes a disarm would restore are gone,
        // and something else may be mapped there by now.  The stub and the
        // slot go after a grace period, as usual.
        if (point->optimization.load() != Optimization::None) finish_unoptimizing_locked(*point);
        if (const HandlerList* list = point->handlers.load(std::memory_order_relaxed))
            for (ProbeRecord* record : list->probes) record->point = nullptr;
        point->armed = false;
        table.remove(point->address);
        retired_points_.push_back(point);
    }
    (void)reclaim_locked();
}

Result<void> Engine::register_probes(std::span<ProbeRecord* const> records, std::span<const ProbeTarget> targets) {
    std::lock_guard lock(lock_);
    if (auto ready = initialize_locked(); !ready) return ready;
    // A raw rt_sigaction may have replaced our handlers: take them back
    // (what the program installed becomes its recorded disposition).
    os::check_signal_ownership();
    Batch batch;
    batch.reserve(records.size(), records.size());  // a slot and a breakpoint per new point
    for (std::size_t i = 0; i < records.size(); ++i) {
        auto registered = register_one_locked(*records[i], targets[i], batch);
        if (registered) continue;
        // Roll back: the batch registers all or nothing.
        for (std::size_t j = i; j-- > 0;) unregister_one_locked(*records[j], batch);
        (void)finish_batch_locked(batch);
        return registered;
    }
    return finish_batch_locked(batch);
}

void Engine::unregister_probes(std::span<ProbeRecord* const> records) {
    std::lock_guard lock(lock_);
    Batch batch;
    for (ProbeRecord* record : records) unregister_one_locked(*record, batch);
    (void)finish_batch_locked(batch);
}

Result<void> Engine::set_enabled(ProbeRecord& record, bool enabled) {
    std::lock_guard lock(lock_);
    record.enabled.store(enabled, std::memory_order_relaxed);
    if (record.point == nullptr) return {};
    Batch batch;
    if (auto updated = update_arming_locked(*record.point, batch); !updated) return updated;
    batch.touched.push_back(record.point);
    return finish_batch_locked(batch);
}

std::string Engine::describe_address_locked(std::uint64_t address) {
    if (auto function = symbols_locked().function_containing(address))
        return fmt::format("{}+{:#x} [{}]", demangle(function->name), address - function->address, function->module);
    return fmt::format("{:#x}", address);
}

std::vector<ProbeListing> Engine::list() {
    std::lock_guard lock(lock_);
    std::vector<ProbeListing> listing;
    table.for_each([&](ProbePoint* point) {
        const HandlerList* list = point->handlers.load(std::memory_order_relaxed);
        if (!list) return;
        for (ProbeRecord* record : list->probes) {
            if (record->where.empty()) record->where = describe_address_locked(record->address);
            std::string kind = point->optimization.load() == Optimization::Optimized ? "optimized"
                               : arch::is_emulated(point->insn)                         ? "emulated"
                               : list->has_post_handler                                 ? "boosted+post-trap"
                                                                                        : "boosted";
            listing.push_back({point->address, record->where, kind, point->not_optimized, arch::describe_insn(point->insn),
                               record->enabled.load(), record->nhit(), record->nmissed.load(), record->nfault.load()});
        }
    });
    std::sort(listing.begin(), listing.end(), [](const auto& a, const auto& b) { return a.address < b.address; });
    return listing;
}

}  // namespace ukp::core
