// libukprobe-agent.so: what `ukprobe run` preloads into the traced program.
//
// At load (a constructor of a preloaded library runs after libc's and
// before the program's own constructors and main), it maps the session the
// tracer created, arms one probe per definition and matching function, and
// watches the dynamic loader so that definitions naming libraries loaded
// later with dlopen are armed when they arrive.  Events go into the
// session's rings; the tracer reads them from its own process.
//
// The program must not see us: the environment is put back as the user
// gave it (our variables removed, LD_PRELOAD restored) before the program's
// code runs, so its children are not traced and its getenv sees nothing new.
//
// Facts it relies on:
// - The agent is linked with the whole engine inside it, so its
//   interpositions (sigaction, signal, _Unwind_RaiseException, pthread_exit)
//   come before libc's in the global scope, as a preloaded library's do.
// - glibc's loader calls _dl_debug_state() (exported by ld.so for debuggers)
//   whenever its list of objects changes, with _r_debug.r_state RT_ADD or
//   RT_DELETE before and RT_CONSISTENT after.  At RT_CONSISTENT after an
//   add, the new objects are mapped but their constructors have not run, so
//   probes armed there also see calls made by those constructors.
// - Registering probes from inside a handler is allowed by the engine (it
//   defers the grace-period work to the next registry call).
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "elf/symbols.hpp"
#include "tracer/agent/hit.hpp"
#include "tracer/definition.hpp"
#include "tracer/session.hpp"
#include "ukprobes/ukprobes.hpp"

namespace ukp::tracer::agent {
namespace {

// One armed probe.  Never freed: a thread may be in its handler while the
// process exits.
struct ArmedEvent {
    CompiledEvent compiled;
    std::unique_ptr<ukp::Kprobe> kprobe;
    std::unique_ptr<ukp::Kretprobe> kretprobe;
    std::string module;
    std::size_t definition = 0;
    bool dropped = false;  // its library was unloaded (requeue_unloaded)
};

struct PendingTarget {
    std::uint64_t address = 0;
    std::string function;  // for the event table: "sym+0x4" or "0x..."
    std::string name;      // the bare function name, for derived event names
    std::uint64_t offset = 0;
    std::string module;
    std::string symbol_name;  // what the engine resolves ("module:sym"), or empty: use address
};

struct Agent {
    Session session;
    std::vector<Definition> definitions;
    // Definitions whose module is not loaded yet, by index.
    std::vector<std::size_t> waiting;
    std::vector<ArmedEvent*> events;
    std::recursive_mutex lock;
    ukp::Kprobe* loader_watch = nullptr;
    int last_loader_state = -1;
};

Agent* agent = nullptr;

void report(std::string_view line) {
    if (agent != nullptr && agent->session.valid()) agent->session.report(line);
}

void copy_text(char* out, std::size_t capacity, std::string_view text) {
    std::size_t length = std::min(text.size(), capacity - 1);
    std::memcpy(out, text.data(), length);
    out[length] = '\0';
}

std::string event_name_for(const Definition& definition, const PendingTarget& target) {
    if (!definition.place.glob) return definition.event;
    // One event per function: the name the kernel would derive for it.
    Place place = definition.place;
    place.symbol = target.name;
    place.glob = false;
    place.module.clear();
    return derive_event_name(definition.type, place);
}

// The module whose file is `path` (same inode), or nullptr.
struct ModuleMatch {
    std::uint64_t bias = 0;
    std::vector<ElfW(Phdr)> headers;
    std::string name;
    bool found = false;
};

ModuleMatch module_by_file(const std::string& path) {
    struct stat wanted;
    ModuleMatch match;
    if (stat(path.c_str(), &wanted) != 0) return match;
    struct Context {
        const struct stat* wanted;
        ModuleMatch* match;
    } context{&wanted, &match};
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* opaque) {
            auto* context = static_cast<Context*>(opaque);
            const char* name = info->dlpi_name != nullptr && info->dlpi_name[0] != '\0' ? info->dlpi_name : "/proc/self/exe";
            struct stat seen;
            if (stat(name, &seen) != 0 || seen.st_dev != context->wanted->st_dev ||
                seen.st_ino != context->wanted->st_ino)
                return 0;
            context->match->bias = info->dlpi_addr;
            context->match->headers.assign(info->dlpi_phdr, info->dlpi_phdr + info->dlpi_phnum);
            context->match->name = name;
            context->match->found = true;
            return 1;
        },
        &context);
    return match;
}

// A probe at a raw address, named by the nearest exported symbol when
// there is one ("sym+0x1c"), else by the address.
PendingTarget target_at(std::uint64_t address) {
    PendingTarget target;
    target.address = address;
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(address), &info) != 0 && info.dli_sname != nullptr) {
        target.name = info.dli_sname;
        target.offset = address - reinterpret_cast<std::uint64_t>(info.dli_saddr);
        target.function = fmt::format("{}+{:#x}", target.name, target.offset);
    } else {
        target.function = fmt::format("{:#x}", address);
    }
    return target;
}

// PATH:OFFSET: the file offset's runtime address, through the PT_LOAD
// segment that maps it.
std::expected<PendingTarget, std::string> file_offset_target(const Place& place) {
    ModuleMatch module = module_by_file(place.module);
    if (!module.found) return std::unexpected(std::string("not loaded"));
    for (const auto& header : module.headers) {
        if (header.p_type != PT_LOAD || !(header.p_flags & PF_X)) continue;
        if (place.offset < header.p_offset || place.offset >= header.p_offset + header.p_filesz) continue;
        PendingTarget target = target_at(module.bias + header.p_vaddr + (place.offset - header.p_offset));
        std::string_view base(module.name);
        target.module = std::string(base.substr(base.rfind('/') + 1));
        return target;
    }
    return std::unexpected(fmt::format("file offset {:#x} is not in an executable segment of {}", place.offset,
                                       place.module));
}

// The functions a definition names now.  An unloaded module gives an empty
// list and `*not_loaded`.
std::vector<PendingTarget> targets_of(const Definition& definition, bool* not_loaded, std::string* error) {
    const Place& place = definition.place;
    std::vector<PendingTarget> targets;
    *not_loaded = false;
    switch (place.form) {
    case Place::Form::Address: {
        targets.push_back(target_at(place.address));
        return targets;
    }
    case Place::Form::FileOffset: {
        auto target = file_offset_target(place);
        if (!target) {
            if (target.error() == "not loaded")
                *not_loaded = true;
            else
                *error = target.error();
            return targets;
        }
        targets.push_back(*target);
        return targets;
    }
    case Place::Form::Symbol:
        break;
    }
    if (!place.glob) {
        PendingTarget target;
        target.name = place.symbol;
        target.offset = place.offset;
        target.symbol_name = place.module.empty() ? place.symbol : place.module + ":" + place.symbol;
        target.function = fmt::format("{}+{:#x}", place.symbol, place.offset);
        targets.push_back(target);
        return targets;
    }
    auto functions = ukp::find_functions(place.module, place.symbol);
    if (!functions) {
        if (functions.error().code == ukp::Errc::UnknownModule)
            *not_loaded = true;
        else
            *error = functions.error().message;
        return targets;
    }
    for (const auto& function : *functions) {
        if (place.offset >= std::max<std::uint64_t>(function.size, 1)) continue;
        PendingTarget target;
        target.address = function.address + place.offset;
        target.name = function.name;
        target.offset = place.offset;
        target.module = function.module;
        target.function = fmt::format("{}+{:#x}", function.name, place.offset);
        targets.push_back(target);
    }
    if (targets.empty()) *error = fmt::format("no function matches '{}'", place.symbol);
    return targets;
}

int on_entry_hit(ukp::Kprobe& probe, ukp::Regs& regs) {
    on_hit(*static_cast<const CompiledEvent*>(probe.data), regs, 0, regs.ip);
    return 0;
}

// A return probe's instance data: the entry timestamp, then the arguments
// its fetch args name ($argN), as they were at entry.
int on_return_entry(ukp::KretprobeInstance& instance, ukp::Regs& regs) {
    const auto* event = static_cast<const CompiledEvent*>(instance.rp->kp.data);
    auto* data = static_cast<std::uint64_t*>(instance.data);
    data[0] = now(*event->session);
    for (std::uint32_t i = 1; i <= event->entry_arguments; ++i) data[i] = argument_at_entry(regs, i);
    return 0;
}

int on_return_hit(ukp::KretprobeInstance& instance, ukp::Regs& regs) {
    const auto* event = static_cast<const CompiledEvent*>(instance.rp->kp.data);
    const auto* data = static_cast<const std::uint64_t*>(instance.data);
    on_hit(*event, regs, data[0], instance.return_address, event->entry_arguments != 0 ? data + 1 : nullptr);
    return 0;
}

// Where a file offset of `path` is mapped now, in any PT_LOAD segment.
std::optional<std::uint64_t> mapped_file_offset(const std::string& path, std::uint64_t offset) {
    ModuleMatch module = module_by_file(path);
    if (!module.found) return std::nullopt;
    for (const auto& header : module.headers)
        if (header.p_type == PT_LOAD && offset >= header.p_offset && offset < header.p_offset + header.p_filesz)
            return module.bias + header.p_vaddr + (offset - header.p_offset);
    return std::nullopt;
}

// Makes the probe objects of one event (not registered yet).
ArmedEvent* prepare_event(std::size_t definition_index, const PendingTarget& target, std::string* error) {
    const Definition& definition = agent->definitions[definition_index];
    std::uint32_t id = agent->session.header().event_count.load(std::memory_order_relaxed);
    if (id >= max_events) {
        *error = "too many events";
        return nullptr;
    }
    // @+OFFS names an offset in the PLACE's file: the module given, or the
    // one the probe lands in.
    std::string file = definition.place.form == Place::Form::FileOffset ? definition.place.module : std::string();
    FileOffsetResolver file_offsets = [file, address = target.address](std::uint64_t offset) -> std::optional<std::uint64_t> {
        std::string path = file;
        if (path.empty()) {
            Dl_info info{};
            if (dladdr(reinterpret_cast<void*>(address), &info) == 0 || info.dli_fname == nullptr) return std::nullopt;
            path = info.dli_fname[0] != '\0' ? info.dli_fname : "/proc/self/exe";
        }
        return mapped_file_offset(path, offset);
    };
    auto compiled = compile_event(definition, agent->session, static_cast<std::uint16_t>(id), target.address,
                                  file_offsets);
    if (!compiled) {
        *error = compiled.error();
        return nullptr;
    }
    auto* armed = new ArmedEvent{*compiled, nullptr, nullptr, target.module, definition_index};
    if (definition.type == ProbeType::Return) {
        armed->kretprobe = std::make_unique<ukp::Kretprobe>();
        auto& probe = *armed->kretprobe;
        probe.kp.addr = reinterpret_cast<void*>(target.address);
        probe.kp.symbol_name = target.address != 0 ? std::string() : target.symbol_name;
        probe.kp.offset = target.address != 0 ? 0 : target.offset;
        probe.kp.data = &armed->compiled;
        probe.handler = on_return_hit;
        probe.entry_handler = on_return_entry;
        probe.data_size = sizeof(std::uint64_t) * (1 + armed->compiled.entry_arguments);
        probe.maxactive = definition.maxactive;
    } else {
        armed->kprobe = std::make_unique<ukp::Kprobe>();
        auto& probe = *armed->kprobe;
        probe.addr = reinterpret_cast<void*>(target.address);
        probe.symbol_name = target.address != 0 ? std::string() : target.symbol_name;
        probe.offset = target.address != 0 ? 0 : target.offset;
        probe.data = &armed->compiled;
        probe.pre_handler = on_entry_hit;
    }
    return armed;
}

// Publishes a registered event in the session's table.
void publish(std::size_t definition_index, ArmedEvent* armed, const PendingTarget& target) {
    const Definition& definition = agent->definitions[definition_index];
    std::uint64_t address = armed->kprobe ? armed->kprobe->address() == nullptr
                                                ? 0
                                                : reinterpret_cast<std::uint64_t>(armed->kprobe->address())
                                          : reinterpret_cast<std::uint64_t>(armed->kretprobe->kp.address());
    armed->compiled.address = address;
    EventEntry& entry = agent->session.event(armed->compiled.id);
    entry.definition = static_cast<std::uint32_t>(definition_index);
    entry.is_return = definition.type == ProbeType::Return;
    entry.address = address;
    copy_text(entry.group, sizeof entry.group, definition.group.empty() ? "ukprobes" : definition.group);
    copy_text(entry.event, sizeof entry.event, event_name_for(definition, target));
    copy_text(entry.function, sizeof entry.function, target.function);
    std::string module = armed->module;
    if (module.empty()) {
        Dl_info info{};
        if (dladdr(reinterpret_cast<void*>(address), &info) != 0 && info.dli_fname != nullptr) {
            std::string_view path(info.dli_fname);
            module = std::string(path.substr(path.rfind('/') + 1));
        }
    }
    copy_text(entry.module, sizeof entry.module, module);
    agent->events.push_back(armed);
    agent->session.header().event_count.store(armed->compiled.id + 1u, std::memory_order_release);
}

ukp::Result<void> register_one(ArmedEvent* armed) {
    if (armed->kprobe) return ukp::register_kprobe(*armed->kprobe);
    return ukp::register_kretprobe(*armed->kretprobe);
}

// Arms every function a definition names now.  Returns false when its
// module is not loaded (the definition then waits for dlopen).
bool arm_definition(std::size_t index) {
    const Definition& definition = agent->definitions[index];
    bool not_loaded = false;
    std::string error;
    auto targets = targets_of(definition, &not_loaded, &error);
    if (not_loaded) return false;
    if (!error.empty()) {
        report(fmt::format("error: {}: {}", definition.command, error));
        return true;
    }
    // Events are published one by one so that each gets the next id; a
    // batch would be faster but one unprobeable function must not cost the
    // others (reported, not fatal).
    std::size_t armed_count = 0;
    for (const auto& target : targets) {
        std::string why;
        ArmedEvent* armed = prepare_event(index, target, &why);
        if (armed == nullptr) {
            report(fmt::format("error: {}: {}: {}", definition.command, target.function, why));
            if (why == "too many events") break;
            continue;
        }
        if (auto registered = register_one(armed); !registered) {
            if (!definition.place.glob && registered.error().code == ukp::Errc::UnknownModule) {
                delete armed;
                return false;
            }
            report(fmt::format("{}: {}: {}: {}", definition.place.glob ? "skipped" : "error", definition.command,
                               target.function, registered.error().message));
            delete armed;
            continue;
        }
        publish(index, armed, target);
        ++armed_count;
        // PATH:OFFSET(REF_CTR_OFFSET): an SDT probe's semaphore, which the
        // program checks before preparing the probe's arguments.  Counted up
        // while we trace; never down (the program ends with us).
        if (definition.place.form == Place::Form::FileOffset && definition.place.reference_counter_offset) {
            auto semaphore = mapped_file_offset(definition.place.module, *definition.place.reference_counter_offset);
            if (semaphore)
                __atomic_fetch_add(reinterpret_cast<std::uint16_t*>(*semaphore), 1, __ATOMIC_RELAXED);
            else
                report(fmt::format("warning: {}: the reference counter is not mapped", definition.command));
        }
    }
    if (definition.place.glob)
        report(fmt::format("info: {}: {} of {} functions probed", definition.command, armed_count, targets.size()));
    return true;
}

// Records each event's probe kind for `ukprobe list --probes`.
void refresh_kinds() {
    auto probes = ukp::list_probes();
    for (ArmedEvent* armed : agent->events) {
        for (const auto& info : probes) {
            if (info.address != armed->compiled.address) continue;
            EventEntry& entry = agent->session.event(armed->compiled.id);
            copy_text(entry.kind, sizeof entry.kind, info.kind);
            copy_text(entry.not_optimized, sizeof entry.not_optimized, info.not_optimized);
            break;
        }
    }
}

void arm_waiting() {
    std::erase_if(agent->waiting, [](std::size_t index) { return arm_definition(index); });
}

// A dlclose that unmapped a library dropped its probes (the engine never
// writes into code that is gone): a definition left with no probe waits
// for the library again, as before it was first loaded.  Run at the next
// change of the loader's list, since the probes go only after dlclose
// has notified the loader's watchers.
void requeue_unloaded() {
    std::vector<std::size_t> touched;
    for (ArmedEvent* armed : agent->events) {
        if (armed->dropped) continue;
        if (armed->kprobe ? armed->kprobe->is_registered() : armed->kretprobe->is_registered()) continue;
        armed->dropped = true;
        touched.push_back(armed->definition);
    }
    for (std::size_t index : touched) {
        bool any_left = std::any_of(agent->events.begin(), agent->events.end(), [index](const ArmedEvent* armed) {
            return armed->definition == index && !armed->dropped;
        });
        if (!any_left && std::find(agent->waiting.begin(), agent->waiting.end(), index) == agent->waiting.end())
            agent->waiting.push_back(index);
    }
}

// Tells the tracer about every loaded object it has not seen yet.
void publish_modules() {
    auto index = elf::SymbolIndex::snapshot();
    if (!index) return;
    const Session& session = agent->session;
    for (const elf::Module& module : index->modules()) {
        if (module.path.find('/') == std::string::npos) continue;  // the vDSO: no file
        std::uint32_t count = session.header().module_count.load(std::memory_order_relaxed);
        bool known = false;
        for (std::uint32_t i = 0; i < count && !known; ++i)
            known = session.module(i).bias == module.bias && module.path == session.module(i).path;
        if (known) continue;
        if (count >= max_modules) return;
        ModuleEntry& entry = session.module(count);
        entry.bias = module.bias;
        copy_text(entry.path, sizeof entry.path, module.path);
        session.header().module_count.store(count + 1, std::memory_order_release);
    }
}

// _dl_debug_state's probe: the loader's object list changed.
int on_loader_change(ukp::Kprobe&, ukp::Regs&) {
    int state = _r_debug.r_state;
    if (state == r_debug::RT_CONSISTENT && agent->last_loader_state == r_debug::RT_ADD) {
        QuietScope quiet;
        std::lock_guard guard(agent->lock);
        requeue_unloaded();
        publish_modules();
        arm_waiting();
        refresh_kinds();
    }
    agent->last_loader_state = state;
    return 0;
}

void watch_loader() {
    auto* probe = new ukp::Kprobe();
    probe->symbol_name = "ld-linux-x86-64.so.2:_dl_debug_state";
    probe->pre_handler = on_loader_change;
    // An int3 is cheap enough for a dlopen, and its handler registers
    // probes: keep it off the trampolines.
    probe->flags = ukp::flag_no_optimize;
    if (auto registered = ukp::register_kprobe(*probe); !registered) {
        report(fmt::format("warning: libraries loaded later with dlopen will not be probed: {}",
                           registered.error().message));
        delete probe;
        return;
    }
    agent->loader_watch = probe;
}

void restore_environment() {
    // The tracer saved the user's LD_PRELOAD (or its absence) for us.
    if (const char* original = std::getenv("UKPROBE_ORIGINAL_LD_PRELOAD"); original != nullptr) {
        if (std::strcmp(original, "\x01unset") == 0)
            unsetenv("LD_PRELOAD");
        else
            setenv("LD_PRELOAD", original, 1);
    }
    unsetenv("UKPROBE_ORIGINAL_LD_PRELOAD");
    unsetenv("UKPROBE_SESSION_FD");
}

void after_fork_in_child() { forget_ring_after_fork(); }

void start() {
    const char* fd_text = std::getenv("UKPROBE_SESSION_FD");
    if (fd_text == nullptr) return;  // loaded outside `ukprobe run`: stay inert
    int fd = std::atoi(fd_text);
    QuietScope quiet;
    restore_environment();
    std::string error;
    Session session = Session::attach(fd, &error);
    if (!session.valid()) {
        fmt::print(stderr, "ukprobe agent: {}; the program runs untraced\n", error);
        return;
    }
    agent = new Agent();
    agent->session = std::move(session);
    SessionHeader& header = agent->session.header();
    header.agent_pid.store(getpid(), std::memory_order_relaxed);
    initialize_hit_path(agent->session);
    pthread_atfork(nullptr, nullptr, after_fork_in_child);

    std::string_view text = agent->session.definitions();
    while (!text.empty()) {
        std::size_t end = text.find('\n');
        std::string_view line = text.substr(0, end);
        text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
        if (line.empty()) continue;
        auto parsed = parse_definition(line);
        if (!parsed) {
            report("error: " + parsed.error().message + ": " + std::string(line));
            agent->definitions.emplace_back();  // keep indexes aligned with the tracer's
            continue;
        }
        agent->definitions.push_back(std::move(*parsed));
    }
    std::lock_guard guard(agent->lock);
    publish_modules();
    for (std::size_t i = 0; i < agent->definitions.size(); ++i) {
        if (agent->definitions[i].command.empty() || agent->definitions[i].type == ProbeType::Remove) continue;
        if (!arm_definition(i)) agent->waiting.push_back(i);
    }
    watch_loader();
    // Optimize what was armed now, before main, rather than at the first
    // registry call that may never come.
    (void)ukp::optimize_pending_probes();
    refresh_kinds();
    header.agent_state.store(static_cast<std::uint32_t>(AgentState::Armed), std::memory_order_release);
}

void finish() {
    if (agent == nullptr) return;
    QuietScope quiet;
    for (ArmedEvent* armed : agent->events) {
        std::uint64_t missed = armed->kprobe ? armed->kprobe->nmissed() : armed->kretprobe->nmissed();
        agent->session.counters(armed->compiled.id).missed.store(missed, std::memory_order_relaxed);
    }
    agent->session.header().agent_state.store(static_cast<std::uint32_t>(AgentState::Finished),
                                              std::memory_order_release);
}

__attribute__((constructor)) void agent_constructor() { start(); }
__attribute__((destructor)) void agent_destructor() { finish(); }

}  // namespace
}  // namespace ukp::tracer::agent
