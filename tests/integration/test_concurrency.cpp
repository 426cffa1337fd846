// Probes under concurrency: threads hitting probes while others register and
// unregister them, a thread blocked inside a slot, and fork().
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "targets.hpp"
#include "ukprobes/ukprobes.hpp"

namespace {

using Clock = std::chrono::steady_clock;

std::chrono::seconds stress_duration() {
    const char* configured = std::getenv("UKP_STRESS_SECONDS");
    return std::chrono::seconds(configured ? std::atoi(configured) : 8);
}

std::vector<unsigned char> bytes_of(void* function, std::size_t length) {
    auto* start = static_cast<unsigned char*>(function);
    return {start, start + length};
}

// Calls every target with checked results; returns calls made, or -1 on a wrong result.
struct Worker {
    std::atomic<bool>* stop;
    std::atomic<long> calls{0};
    std::atomic<long> wrong{0};
    void run() {
        for (int i = 0; !stop->load(std::memory_order_relaxed); ++i) {
            int x = i & 0xff;
            bool ok = boost_target(x) == 2 * x + 1 && push_target(x) == x + 5 && jcc_target(x) == (x == 0 ? 2 : 1) &&
                      call_target(x) == 2 * (x + 1);
            if (!ok) wrong.fetch_add(1);
            calls.fetch_add(1, std::memory_order_relaxed);
        }
    }
};

std::unique_ptr<ukp::Kprobe> new_probe(void* address, bool with_post) {
    auto probe = std::unique_ptr<ukp::Kprobe>(new ukp::Kprobe{.addr = address, .pre_handler = [](ukp::Kprobe&, ukp::Regs&) { return 0; }});
    if (with_post) probe->post_handler = [](ukp::Kprobe&, ukp::Regs&, unsigned long) {};
    return probe;
}

TEST(Concurrency, StressRegisterEnableDisableUnregisterWhileThreadsHit) {
    void* sites[] = {function_address(boost_target), function_address(push_target), jcc_target_branch,
                     call_target_call, function_address(add_one)};
    std::vector<std::vector<unsigned char>> original;
    for (void* site : sites) original.push_back(bytes_of(site, 16));

    std::atomic<bool> stop{false};
    std::vector<std::unique_ptr<Worker>> workers;
    std::vector<std::thread> threads;
    for (int i = 0; i < 3; ++i) {
        workers.emplace_back(new Worker{&stop});
        threads.emplace_back([w = workers.back().get()] { w->run(); });
    }

    // Churn: random batches of probes (two per site, some with post-handlers),
    // random enable/disable, then unregister, until the deadline.
    std::mt19937 random(12345);
    long rounds = 0;
    for (auto deadline = Clock::now() + stress_duration(); Clock::now() < deadline; ++rounds) {
        std::vector<std::unique_ptr<ukp::Kprobe>> probes;
        std::vector<ukp::Kprobe*> batch;
        for (void* site : sites)
            for (int copy = 0; copy < 2; ++copy)
                if (random() % 2) {
                    probes.push_back(new_probe(site, random() % 3 == 0));
                    batch.push_back(probes.back().get());
                }
        if (batch.empty()) continue;
        auto registered = ukp::register_kprobes(batch);
        ASSERT_TRUE(registered) << registered.error().message;
        for (auto* probe : batch) {
            if (random() % 4 == 0) {
                ASSERT_TRUE(ukp::disable_kprobe(*probe));
            }
            if (random() % 4 == 0) {
                ASSERT_TRUE(ukp::enable_kprobe(*probe));
            }
        }
        std::this_thread::sleep_for(std::chrono::microseconds(random() % 500));
        ukp::unregister_kprobes(batch);
    }

    // Final stable phase: the workers stop, probes go in, each worker makes an
    // exact number of calls, and every hit must be counted.
    stop = true;
    for (auto& thread : threads) thread.join();
    long total_calls = 0;
    for (auto& worker : workers) {
        EXPECT_EQ(worker->wrong.load(), 0);
        total_calls += worker->calls.load();
    }
    std::vector<std::unique_ptr<ukp::Kprobe>> stable;
    std::vector<ukp::Kprobe*> batch;
    for (void* site : sites) {
        stable.push_back(new_probe(site, site == sites[0]));
        batch.push_back(stable.back().get());
    }
    ASSERT_TRUE(ukp::register_kprobes(batch));
    constexpr int calls_per_thread = 20000;
    std::vector<std::thread> final_threads;
    std::atomic<int> wrong{0};
    for (int t = 0; t < 3; ++t)
        final_threads.emplace_back([&] {
            for (int i = 0; i < calls_per_thread; ++i)
                if (boost_target(i & 7) != 2 * (i & 7) + 1 || push_target(1) != 6 || jcc_target(0) != 2 ||
                    call_target(1) != 4)
                    ++wrong;
        });
    for (auto& thread : final_threads) thread.join();
    EXPECT_EQ(wrong.load(), 0);
    for (std::size_t i = 0; i < stable.size(); ++i) {
        // add_one is called by call_target: one hit per call_target call.
        EXPECT_EQ(stable[i]->nhit(), 3u * calls_per_thread) << "site " << i;
        EXPECT_EQ(stable[i]->nmissed(), 0u) << "site " << i;
    }
    ukp::unregister_kprobes(batch);
    for (std::size_t i = 0; i < std::size(sites); ++i) EXPECT_EQ(bytes_of(sites[i], 16), original[i]) << "site " << i;
    EXPECT_EQ(ukp::reclaim_retired_probes(), 0u);
    std::printf("stress: %ld rounds, %ld checked calls during churn\n", rounds, total_calls);
}

// Seed 001: a thread traps on a breakpoint that another thread removes
// before the first reaches the dispatcher.  The call must complete normally.
TEST(Concurrency, CallsRacingWithUnregisterAllComplete) {
    std::atomic<bool> stop{false};
    Worker worker{&stop};
    std::thread thread([&] { worker.run(); });
    for (int round = 0; round < 3000; ++round) {
        auto probe = new_probe(function_address(boost_target), false);
        ASSERT_TRUE(ukp::register_kprobe(*probe));
        ukp::unregister_kprobe(*probe);
    }
    stop = true;
    thread.join();
    EXPECT_EQ(worker.wrong.load(), 0);
    EXPECT_GT(worker.calls.load(), 0);
}

// A thread blocked in a system call it issued from a slot keeps the slot
// alive after unregistration, and returns to the right place.
TEST(Concurrency, ThreadBlockedInsideASlotKeepsItUntilItLeaves) {
    int pipe_fds[2];
    ASSERT_EQ(pipe(pipe_fds), 0);
    auto probe = new_probe(blocking_read_syscall, false);
    ASSERT_TRUE(ukp::register_kprobe(*probe));
    ASSERT_EQ(ukp::list_probes().at(0).kind, "boosted");

    std::atomic<long> result{-100};
    char buffer[8] = {};
    std::thread reader([&] { result = blocking_read(pipe_fds[0], buffer, sizeof buffer); });
    for (int i = 0; i < 200 && probe->nhit() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_EQ(probe->nhit(), 1u);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // into the read

    auto started = Clock::now();
    ukp::unregister_kprobe(*probe);
    EXPECT_LT(Clock::now() - started, std::chrono::seconds(2)) << "unregister must not wait for the reader";
    EXPECT_EQ(ukp::reclaim_retired_probes(), 1u) << "the slot is still in use";

    ASSERT_EQ(write(pipe_fds[1], "hello", 5), 5);
    reader.join();
    EXPECT_EQ(result.load(), 5);
    EXPECT_STREQ(buffer, "hello");
    EXPECT_EQ(ukp::reclaim_retired_probes(), 0u);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}

TEST(Concurrency, ForkedChildKeepsWorkingWithInheritedProbes) {
    auto probe = new_probe(function_address(boost_target), true);
    ASSERT_TRUE(ukp::register_kprobe(*probe));
    EXPECT_EQ(boost_target(1), 3);
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        bool ok = boost_target(2) == 5 && boost_target(3) == 7 && probe->nhit() == 3;
        ukp::unregister_kprobe(*probe);
        ok = ok && boost_target(4) == 9 && probe->nhit() == 3 &&
             *reinterpret_cast<unsigned char*>(function_address(boost_target)) == 0x8d;
        auto again = new_probe(function_address(push_target), false);
        ok = ok && ukp::register_kprobe(*again) && push_target(1) == 6 && again->nhit() == 1;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
    EXPECT_EQ(probe->nhit(), 1u) << "the child's hits are its own";
    EXPECT_EQ(boost_target(5), 11);
    EXPECT_EQ(probe->nhit(), 2u);
}

}  // namespace
