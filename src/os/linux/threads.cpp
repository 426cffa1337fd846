#include "os/linux/threads.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "os/linux/raw_syscall.hpp"

namespace ukp::os {

std::optional<ThreadPosition> read_thread_position(int tid) noexcept {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    char text[256] = {};
    ssize_t length = ::read(fd, text, sizeof text - 1);
    ::close(fd);
    if (length <= 0) return std::nullopt;
    if (std::strncmp(text, "running", 7) == 0) return ThreadPosition{true, 0};
    // The last two hexadecimal fields are SP and PC.
    char* fields[16];
    int count = 0;
    char* cursor = nullptr;
    for (char* token = ::strtok_r(text, " \n", &cursor); token && count < 16;
         token = ::strtok_r(nullptr, " \n", &cursor))
        fields[count++] = token;
    if (count < 3) return ThreadPosition{true, 0};
    return ThreadPosition{false, std::strtoull(fields[count - 1], nullptr, 16)};
}

std::vector<int> list_threads() {
    std::vector<int> tids;
    DIR* directory = ::opendir("/proc/self/task");
    if (directory == nullptr) return tids;
    while (dirent* entry = ::readdir(directory))
        if (entry->d_name[0] >= '0' && entry->d_name[0] <= '9') tids.push_back(std::atoi(entry->d_name));
    ::closedir(directory);
    return tids;
}

bool thread_is_alive(int tid) noexcept { return raw_tgkill(raw_getpid(), tid, 0) != -ESRCH; }

}  // namespace ukp::os
