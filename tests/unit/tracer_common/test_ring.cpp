// The per-thread ring between the agent (producer) and the tracer
// (consumer): reserve/commit on one side, drain on the other.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "tracer/session.hpp"

namespace {

using namespace ukp::tracer;

Session one_ring(std::uint32_t bytes) {
    SessionOptions options;
    options.ring_count = 1;
    options.ring_bytes = bytes;
    std::string error;
    Session session = Session::create("p:x f\n", options, &error);
    EXPECT_TRUE(session.valid()) << error;
    return session;
}

// Writes one record of `size` bytes whose event is `event`; false when full.
bool write_record(const Session& session, std::uint64_t& known_tail, std::uint32_t size, std::uint16_t event) {
    Reservation reservation = reserve(session, 0, size, known_tail);
    if (reservation.data == nullptr) return false;
    std::memset(reservation.data, 0, size);
    reinterpret_cast<RecordHeader*>(reservation.data)->event = event;
    commit(session, 0, reservation, size, size);
    return true;
}

std::vector<std::uint16_t> drain_events(const Session& session) {
    std::vector<std::uint16_t> events;
    drain(session, 0, [&](const RecordHeader& header, std::span<const std::uint8_t>) { events.push_back(header.event); });
    return events;
}

TEST(Ring, FillsUpThenTakesRecordsAgainOnceTheConsumerFreedSpace) {
    Session session = one_ring(4096);
    ASSERT_TRUE(session.valid());
    std::uint64_t known_tail = 0;
    constexpr std::uint32_t size = 256;
    int written = 0;
    while (write_record(session, known_tail, size, static_cast<std::uint16_t>(written))) ++written;
    EXPECT_EQ(written, 4096 / size);
    // The producer's copy of the tail is old now; the consumer frees space.
    auto events = drain_events(session);
    ASSERT_EQ(events.size(), static_cast<std::size_t>(written));
    for (int i = 0; i < written; ++i) EXPECT_EQ(events[static_cast<std::size_t>(i)], i);
    EXPECT_EQ(known_tail, 0u) << "a full ring makes the producer read the tail, nothing else";
    // Room again: the producer finds out by reading the real tail once.
    EXPECT_TRUE(write_record(session, known_tail, size, 1000));
    EXPECT_EQ(known_tail, 4096u);
    EXPECT_EQ(drain_events(session), std::vector<std::uint16_t>{1000});
}

TEST(Ring, RecordsThatDoNotFitAtTheEndWrapWithPadding) {
    Session session = one_ring(4096);
    ASSERT_TRUE(session.valid());
    std::uint64_t known_tail = 0;
    std::vector<std::uint16_t> expected;
    for (std::uint16_t round = 0; round < 200; ++round) {
        // 24 bytes short of a wrap point every few records.
        std::uint32_t size = round % 3 == 0 ? 1000 : 168;
        ASSERT_TRUE(write_record(session, known_tail, size, round)) << "round " << round;
        expected.push_back(round);
        if (round % 4 == 3) {
            EXPECT_EQ(drain_events(session), expected);
            expected.clear();
        }
    }
}

}  // namespace
