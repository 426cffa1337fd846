#include "core/thread_state.hpp"

#include <sys/mman.h>

#include <new>

#include "os/linux/raw_syscall.hpp"
#include "os/linux/threads.hpp"

namespace ukp::core {

namespace detail {
std::atomic<ThreadChunk*> first_chunk{nullptr};
thread_local constinit ThreadRecord* this_thread = nullptr;
}

namespace {

detail::ThreadChunk* map_chunk() noexcept {
    long address = os::raw_syscall(SYS_mmap, 0, sizeof(detail::ThreadChunk), PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (address < 0 && address > -4096) return nullptr;
    return new (reinterpret_cast<void*>(address)) detail::ThreadChunk();
}

std::atomic<std::size_t> chunks_mapped{0};

void unmap_chunk(detail::ThreadChunk* chunk) noexcept {
    os::raw_syscall(SYS_munmap, reinterpret_cast<long>(chunk), sizeof(detail::ThreadChunk));
}

// A new thread may have inherited the tid of one that exited while its record
// was still held: that record is stale and must not make a grace period wait.
void release_stale_records_of(int tid, ThreadRecord* keep) noexcept {
    for_each_thread_record([&](ThreadRecord& record) {
        if (&record != keep && record.tid.load() == tid) {
            if (record.dispatch_sequence.load() & 1) record.dispatch_sequence.fetch_add(1);
            record.dispatch_depth = 0;
            record.tid.store(0);
        }
    });
}

ThreadRecord* claim_record(int tid) noexcept {
    std::atomic<detail::ThreadChunk*>* link = &detail::first_chunk;
    for (;;) {
        auto* chunk = link->load(std::memory_order_acquire);
        if (chunk == nullptr) {
            auto* fresh = map_chunk();
            if (fresh == nullptr) return nullptr;
            // Indices are fixed when the chunk is made; a chunk that loses
            // the race below is unmapped, so numbering may skip, never repeat.
            std::size_t base = chunks_mapped.fetch_add(1) * detail::records_per_chunk;
            for (std::size_t i = 0; i < detail::records_per_chunk; ++i) fresh->records[i].index = base + i;
            if (!link->compare_exchange_strong(chunk, fresh)) {
                unmap_chunk(fresh);  // another thread linked one first: use it
            } else {
                chunk = fresh;
            }
        }
        for (auto& record : chunk->records) {
            int expected = 0;
            if (record.tid.load(std::memory_order_relaxed) == 0 && record.tid.compare_exchange_strong(expected, tid))
                return &record;
        }
        link = &chunk->next;
    }
}

}  // namespace

ThreadRecord* detail::claim_this_thread_record() noexcept {
    int tid = os::raw_gettid();
    auto* record = claim_record(tid);
    if (record == nullptr) return nullptr;
    // Instances left by the exited thread that held this record before.
    while (ReturnInstance* stale = record->return_stack.top()) {
        abandon_return_instance(*stale, record->index);
        record->return_stack.pop();
    }
    record->landings_used = 0;  // the block stays with the record
    release_stale_records_of(tid, record);
    detail::this_thread = record;
    return record;
}

void release_exited_thread_records() noexcept {
    for_each_thread_record([](ThreadRecord& record) {
        int tid = record.tid.load();
        if (tid != 0 && !os::thread_is_alive(tid)) {
            // An odd sequence left by a thread that died inside the dispatcher
            // (pthread_exit from a handler) must not hold grace periods.
            if (record.dispatch_sequence.load() & 1) record.dispatch_sequence.fetch_add(1);
            record.dispatch_depth = 0;
            int expected = tid;
            record.tid.compare_exchange_strong(expected, 0);
        }
    });
}

namespace {
constexpr std::size_t return_chunk_size = 64 * 1024;

ReturnStackChunk* map_return_chunk(std::size_t at_least, ReturnStackChunk* previous) noexcept {
    std::size_t size = return_chunk_size;
    while (size < at_least + sizeof(ReturnStackChunk)) size *= 2;
    long address = os::raw_syscall(SYS_mmap, 0, static_cast<long>(size), PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (address < 0 && address > -4096) return nullptr;
    return new (reinterpret_cast<void*>(address)) ReturnStackChunk{previous, nullptr, size, 0};
}

std::byte* chunk_begin(ReturnStackChunk* chunk) noexcept {
    return reinterpret_cast<std::byte*>(chunk) + sizeof(ReturnStackChunk);
}
std::byte* chunk_end(ReturnStackChunk* chunk) noexcept { return reinterpret_cast<std::byte*>(chunk) + chunk->size; }
}  // namespace

bool ReturnStack::make_room(std::size_t size) noexcept {
    if (chunk_ == nullptr) {
        chunk_ = map_return_chunk(size, nullptr);
        if (chunk_ == nullptr) return false;
        free_ = chunk_begin(chunk_);
    }
    // Move up to the next chunk (reused or new) until the instance fits.
    while (free_ + size > chunk_end(chunk_)) {
        if (chunk_->next != nullptr && chunk_begin(chunk_->next) + size <= chunk_end(chunk_->next)) {
            chunk_ = chunk_->next;
        } else {
            // A kept chunk too small for this instance stays linked after the new one.
            ReturnStackChunk* fresh = map_return_chunk(size, chunk_);
            if (fresh == nullptr) return false;
            fresh->next = chunk_->next;
            chunk_->next = fresh;
            chunk_ = fresh;
        }
        free_ = chunk_begin(chunk_);
    }
    end_ = chunk_end(chunk_);
    return true;
}

void adopt_records_after_fork() noexcept {
    if (detail::this_thread != nullptr) detail::this_thread->tid.store(os::raw_gettid());
    release_exited_thread_records();
}

}  // namespace ukp::core
