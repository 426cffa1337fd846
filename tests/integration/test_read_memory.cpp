// Reads that may fault (ukp::read_memory, ukp::read_string and the C names
// copy_from_user_nofault, strncpy_from_user_nofault): a bad address fails the
// read, never the program, inside handlers and outside them.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "targets.hpp"
#include "ukprobes/kprobes.h"
#include "ukprobes/ukprobes.hpp"

namespace {

// Two pages: the first readable, the second PROT_NONE.
struct GuardedPages {
    GuardedPages() {
        page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
        base = static_cast<char*>(mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        mprotect(base + page, page, PROT_NONE);
    }
    ~GuardedPages() { munmap(base, 2 * page); }
    char* edge() const { return base + page; }
    std::size_t page;
    char* base;
};

TEST(ReadMemory, ReadsGoodMemory) {
    std::uint64_t value = 0x1122334455667788, out = 0;
    EXPECT_TRUE(ukp::read_memory(&out, &value, sizeof out));
    EXPECT_EQ(out, value);
    char text[] = "hello, world";
    char copy[sizeof text] = {};
    EXPECT_TRUE(ukp::read_memory(copy, text, sizeof text));
    EXPECT_STREQ(copy, text);
}

TEST(ReadMemory, BadAddressesFailWithoutKillingTheProgram) {
    GuardedPages pages;
    std::uint64_t out = 0;
    EXPECT_FALSE(ukp::read_memory(&out, nullptr, 8));
    EXPECT_FALSE(ukp::read_memory(&out, pages.edge(), 8));
    EXPECT_FALSE(ukp::read_memory(&out, reinterpret_cast<void*>(0x8000000000000000ULL), 8));  // non-canonical
    char buffer[16];
    EXPECT_FALSE(ukp::read_memory(buffer, pages.edge() - 4, sizeof buffer));  // straddles into the guard
    EXPECT_TRUE(ukp::read_memory(buffer, pages.edge() - 4, 4));
}

TEST(ReadMemory, StringsAreTerminatedAndTruncated) {
    GuardedPages pages;
    char out[8];
    EXPECT_EQ(ukp::read_string(out, "abc", sizeof out), 3);
    EXPECT_STREQ(out, "abc");
    EXPECT_EQ(ukp::read_string(out, "abcdefghijkl", sizeof out), 7);
    EXPECT_STREQ(out, "abcdefg");
    EXPECT_EQ(ukp::read_string(out, nullptr, sizeof out), -1);
    EXPECT_STREQ(out, "");
    // A string running into the guard page: what was before the fault, terminated.
    std::memcpy(pages.edge() - 3, "xyz", 3);
    EXPECT_EQ(ukp::read_string(out, pages.edge() - 3, sizeof out), -1);
    EXPECT_STREQ(out, "xyz");
}

TEST(ReadMemory, KernelNamesKeepKernelReturnValues) {
    char out[4];
    std::uint32_t word = 7, copy = 0;
    EXPECT_EQ(copy_from_user_nofault(&copy, &word, sizeof copy), 0);
    EXPECT_EQ(copy, 7u);
    EXPECT_EQ(copy_from_user_nofault(&copy, nullptr, sizeof copy), -EFAULT);
    EXPECT_EQ(strncpy_from_user_nofault(out, "ab", sizeof out), 3);     // length with the NUL
    EXPECT_EQ(strncpy_from_user_nofault(out, "abc", sizeof out), 4);    // exactly fits
    EXPECT_EQ(strncpy_from_user_nofault(out, "abcdef", sizeof out), 4); // truncated: count
    EXPECT_STREQ(out, "abc");
    EXPECT_EQ(strncpy_from_user_nofault(out, nullptr, sizeof out), -EFAULT);
}

TEST(ReadMemory, WorksInsideAHandlerOnAWildPointerArgument) {
    std::atomic<int> faults{0}, reads{0};
    ukp::Kprobe probe{.addr = function_address(load_target), .pre_handler = [&](ukp::Kprobe&, ukp::Regs& regs) {
                          int value = 0;
                          if (ukp::read_memory(&value, reinterpret_cast<const void*>(regs.di), sizeof value))
                              reads += value;
                          else
                              ++faults;
                          return 0;
                      }};
    auto registered = ukp::register_kprobe(probe);
    ASSERT_TRUE(registered) << registered.error().message;
    int five = 5;
    EXPECT_EQ(load_target(&five), 5);
    // The handler reads the bad pointer first and survives; the program's
    // own load then faults as the program's (caught below in a child).
    pid_t child = fork();
    if (child == 0) {
        load_target(nullptr);
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) << status;
    EXPECT_EQ(reads.load(), 5);
    EXPECT_EQ(probe.nfault(), 0u);
    ukp::unregister_kprobe(probe);
}

TEST(ReadMemory, ManyThreadsReadingBadMemory) {
    GuardedPages pages;
    std::atomic<long> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 2000; ++i) {
                std::uint64_t out;
                if (!ukp::read_memory(&out, pages.edge() + (i % 64) * 8, sizeof out)) ++failures;
            }
        });
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(failures.load(), 8000);
}

}  // namespace
