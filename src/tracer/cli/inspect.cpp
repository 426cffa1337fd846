// `ukprobe check` and `ukprobe list`: looking at binaries and traces
// without running anything.
//
// A binary's libraries are the ones its dynamic linker would load: we ask
// the linker itself (`ld.so --list BINARY`, which maps them and prints
// where from without running any of the program's code), so search paths,
// RUNPATH, ld.so.cache and hwcaps directories are the real ones.
#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <gelf.h>
#include <libelf.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include "elf/function_table.hpp"
#include "tracer/cli/commands.hpp"
#include "tracer/session.hpp"

extern char** environ;

namespace ukp::tracer::cli {

namespace {

struct FileModule {
    std::string path;
    std::string name;  // basename
    std::vector<elf::detail::FunctionEntry> functions;
    bool read = false;
};

std::string basename_of(std::string_view path) { return std::string(path.substr(path.rfind('/') + 1)); }

std::string interpreter_of(const std::string& binary) {
    std::string interpreter;
    int fd = open(binary.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return interpreter;
    elf_version(EV_CURRENT);
    if (Elf* elf = elf_begin(fd, ELF_C_READ, nullptr)) {
        std::size_t count = 0;
        elf_getphdrnum(elf, &count);
        for (std::size_t i = 0; i < count; ++i) {
            GElf_Phdr header;
            if (gelf_getphdr(elf, static_cast<int>(i), &header) == nullptr || header.p_type != PT_INTERP) continue;
            std::string bytes(header.p_filesz, '\0');
            if (pread(fd, bytes.data(), bytes.size(), static_cast<off_t>(header.p_offset)) ==
                static_cast<ssize_t>(bytes.size()))
                interpreter = bytes.c_str();
        }
        elf_end(elf);
    }
    close(fd);
    return interpreter;
}

// The binary first, then what `ld.so --list` says it loads.
std::vector<FileModule> modules_of_binary(const std::string& binary) {
    std::vector<FileModule> modules;
    char resolved[PATH_MAX];
    std::string path = realpath(binary.c_str(), resolved) != nullptr ? resolved : binary;
    modules.push_back({path, basename_of(path), {}, false});
    std::string interpreter = interpreter_of(path);
    if (interpreter.empty()) return modules;  // static, or not ELF
    int pipe_fds[2];
    if (pipe(pipe_fds) != 0) return modules;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
    posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    std::vector<char*> argv{const_cast<char*>(interpreter.c_str()), const_cast<char*>("--list"),
                            const_cast<char*>(path.c_str()), nullptr};
    pid_t child = 0;
    int spawned = posix_spawn(&child, interpreter.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(pipe_fds[1]);
    std::string output;
    char buffer[4096];
    for (ssize_t got; spawned == 0 && (got = read(pipe_fds[0], buffer, sizeof buffer)) > 0;)
        output.append(buffer, static_cast<std::size_t>(got));
    close(pipe_fds[0]);
    if (spawned == 0) waitpid(child, nullptr, 0);
    // Lines: "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
    // "\t/lib64/ld-linux-x86-64.so.2 (0x...)".
    std::size_t at = 0;
    while (at < output.size()) {
        std::size_t end = output.find('\n', at);
        std::string line = output.substr(at, end == std::string::npos ? std::string::npos : end - at);
        at = end == std::string::npos ? output.size() : end + 1;
        std::string file;
        if (auto arrow = line.find("=> "); arrow != std::string::npos)
            file = line.substr(arrow + 3);
        else
            file = line.substr(line.find_first_not_of(" \t"));
        file = file.substr(0, file.find(" ("));
        if (file.empty() || file[0] != '/') continue;
        if (realpath(file.c_str(), resolved) != nullptr) file = resolved;
        if (std::none_of(modules.begin(), modules.end(), [&](const FileModule& m) { return m.path == file; }))
            modules.push_back({file, basename_of(file), {}, false});
    }
    return modules;
}

std::vector<FileModule> modules_of_process(int pid) {
    std::vector<FileModule> modules;
    std::ifstream maps(fmt::format("/proc/{}/maps", pid));
    std::string line;
    while (std::getline(maps, line)) {
        // start-end perms offset dev inode path
        if (line.find(" r-xp ") == std::string::npos) continue;
        auto slash = line.find('/');
        if (slash == std::string::npos) continue;
        std::string path = line.substr(slash);
        if (path.ends_with(" (deleted)")) continue;
        if (std::none_of(modules.begin(), modules.end(), [&](const FileModule& m) { return m.path == path; }))
            modules.push_back({path, basename_of(path), {}, false});
    }
    return modules;
}

const std::vector<elf::detail::FunctionEntry>& functions_of(FileModule& module) {
    if (!module.read) {
        module.read = true;
        if (auto functions = elf::detail::read_functions_from_file(module.path, 0); functions)
            module.functions = std::move(*functions);
    }
    return module.functions;
}

bool module_matches(const FileModule& module, const std::string& wanted) {
    if (wanted.find('/') != std::string::npos) {
        struct stat a, b;
        return stat(wanted.c_str(), &a) == 0 && stat(module.path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
               a.st_ino == b.st_ino;
    }
    return module.name == wanted;
}

void print_error(const Definition& definition, std::size_t position, const std::string& message) {
    fmt::print(stderr, "{}", format_error(DefinitionError{message, position, definition.command}));
}

// Whether the definition's place exists in `modules`.
bool check_place(const Definition& definition, std::vector<FileModule>& modules) {
    const Place& place = definition.place;
    if (place.form == Place::Form::Address) return true;  // only the running process can tell
    if (place.form == Place::Form::FileOffset) {
        if (access(place.module.c_str(), R_OK) != 0) {
            print_error(definition, place.position, "Failed to find the given file");
            return false;
        }
        return true;
    }
    std::vector<FileModule*> searched;
    if (!place.module.empty()) {
        for (auto& module : modules)
            if (module_matches(module, place.module)) searched.push_back(&module);
        if (searched.empty()) {
            if (place.module.find('/') != std::string::npos && access(place.module.c_str(), R_OK) == 0) {
                modules.push_back({place.module, basename_of(place.module), {}, false});
                searched.push_back(&modules.back());
            } else {
                print_error(definition, place.position,
                            fmt::format("Module '{}' is not loaded by this program (dlopen'ed libraries: give "
                                        "its path)", place.module));
                return false;
            }
        }
    } else {
        for (auto& module : modules) searched.push_back(&module);
    }
    std::size_t matches = 0;
    std::size_t symbol_position = place.position + (place.module.empty() ? 0 : place.module.size() + 1);
    for (FileModule* module : searched) {
        for (const auto& function : functions_of(*module)) {
            bool hit = place.glob ? fnmatch(place.symbol.c_str(), function.name.c_str(), 0) == 0
                                  : function.name == place.symbol;
            if (!hit) continue;
            if (!place.glob && function.size != 0 && place.offset >= function.size) {
                print_error(definition, symbol_position,
                            fmt::format("Offset {:#x} is beyond the end of {} (size {:#x})", place.offset,
                                        place.symbol, function.size));
                return false;
            }
            ++matches;
        }
    }
    if (matches == 0) {
        print_error(definition, symbol_position,
                    place.glob ? "No function matches the pattern" : "Failed to find the given symbol");
        return false;
    }
    return true;
}

// The session of the ukprobe trace running in `pid`: found through the
// memfd the tracer holds (readable via /proc/TRACER/fd by the same user).
std::optional<Session> find_session(int pid) {
    DIR* proc = opendir("/proc");
    if (proc == nullptr) return std::nullopt;
    std::optional<Session> found;
    while (dirent* process = readdir(proc)) {
        if (!std::isdigit(static_cast<unsigned char>(process->d_name[0]))) continue;
        std::string fd_directory = fmt::format("/proc/{}/fd", process->d_name);
        DIR* fds = opendir(fd_directory.c_str());
        if (fds == nullptr) continue;
        while (dirent* fd = readdir(fds)) {
            std::string link = fd_directory + "/" + fd->d_name;
            char target[256];
            ssize_t length = readlink(link.c_str(), target, sizeof target - 1);
            if (length <= 0) continue;
            target[length] = '\0';
            if (std::strstr(target, "memfd:ukprobe-session") == nullptr) continue;
            int opened = open(link.c_str(), O_RDWR | O_CLOEXEC);
            if (opened < 0) continue;
            std::string error;
            Session session = Session::attach(opened, &error);
            if (session.valid() && session.header().agent_pid.load() == pid) {
                found = std::move(session);
                break;
            }
        }
        closedir(fds);
        if (found) break;
    }
    closedir(proc);
    return found;
}

}  // namespace

int check(const CheckOptions& options) {
    auto loaded = load_definitions(options.definitions, options.files);
    if (!loaded) return 1;
    if (loaded->parsed.empty() && options.definitions.empty() && options.files.empty()) {
        fmt::print(stderr, "ukprobe: error: nothing to check (-e or -f)\n");
        return 2;
    }
    if (options.binary.empty()) {
        fmt::print(stderr, "ukprobe: {} definition{} valid (syntax only: give -x BINARY to check symbols)\n",
                   loaded->parsed.size(), loaded->parsed.size() == 1 ? "" : "s");
        return 0;
    }
    auto modules = modules_of_binary(options.binary);
    bool all_valid = true;
    for (const auto& definition : loaded->parsed) all_valid &= check_place(definition, modules);
    if (all_valid)
        fmt::print(stderr, "ukprobe: {} definition{} valid for {}\n", loaded->parsed.size(),
                   loaded->parsed.size() == 1 ? "" : "s", options.binary);
    return all_valid ? 0 : 1;
}

int list(const ListOptions& options) {
    if (options.probes) {
        if (options.pid <= 0) {
            fmt::print(stderr, "ukprobe: error: --probes needs -p PID (a program running under ukprobe run)\n");
            return 2;
        }
        auto session = find_session(options.pid);
        if (!session) {
            fmt::print(stderr, "ukprobe: error: no ukprobe trace found for pid {}\n", options.pid);
            return 1;
        }
        std::uint32_t events = session->header().event_count.load();
        for (std::uint32_t i = 0; i < events; ++i) {
            const EventEntry& entry = session->event(i);
            if (fnmatch(options.pattern.c_str(), entry.event, 0) != 0 &&
                fnmatch(options.pattern.c_str(), entry.function, 0) != 0)
                continue;
            fmt::print("{:016x}  {}{}/{}  {} [{}]  {}{}{}\n", entry.address, entry.is_return ? "r " : "p ",
                       entry.group, entry.event, entry.function, entry.module, entry.kind,
                       entry.not_optimized[0] ? "  not optimized: " : "", entry.not_optimized);
        }
        return 0;
    }
    std::vector<FileModule> modules;
    if (options.pid > 0)
        modules = modules_of_process(options.pid);
    else if (!options.target.empty())
        modules = modules_of_binary(options.target);
    else {
        fmt::print(stderr, "ukprobe: error: list what? give a BINARY or -p PID\n");
        return 2;
    }
    if (modules.empty()) {
        fmt::print(stderr, "ukprobe: error: no modules found\n");
        return 1;
    }
    std::size_t shown = 0;
    for (auto& module : modules) {
        std::set<std::string> names;
        for (const auto& function : functions_of(module))
            if (fnmatch(options.pattern.c_str(), function.name.c_str(), 0) == 0) names.insert(function.name);
        for (const auto& name : names) {
            fmt::print("{}:{}\n", module.name, name);
            ++shown;
        }
    }
    if (shown == 0) {
        fmt::print(stderr, "ukprobe: no function matches '{}'\n", options.pattern);
        return 1;
    }
    return 0;
}

}  // namespace ukp::tracer::cli
