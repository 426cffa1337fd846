// Formatting speed, for the record: 100k representative events through each
// writer into /dev/null.  Nothing is asserted about time (CI machines vary);
// the rate is printed.  The goal on a developer machine is ~1M events/s.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

#include "output_test_support.hpp"

namespace ukp::tracer {
namespace {

using namespace testing;

DecodedEvent representative_event() {
    DecodedEvent event = entry_event();
    event.fields = {{"size", hex_value(0x1000)},
                    {"count", unsigned_value(123456)},
                    {"name", string_value("/usr/lib/x86_64-linux-gnu/libc.so.6")},
                    {"caller", symbol_value("main+0x1c/0x80")}};
    return event;
}

TEST(WriterThroughput, HundredThousandEventsPerFormat) {
    constexpr int event_count = 100'000;
    std::FILE* null_stream = std::fopen("/dev/null", "w");
    ASSERT_NE(null_stream, nullptr);
    DecodedEvent entry = representative_event();
    DecodedEvent exit = return_event();
    for (const auto format : {Format::Text, Format::Json, Format::Perfetto}) {
        auto writer = make_writer(format, null_stream);
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < event_count; ++i) {
            DecodedEvent& event = i % 4 == 3 ? exit : entry;
            event.timestamp_ns += 997;
            auto written = writer->write(event);
            ASSERT_TRUE(written.has_value()) << written.error().message;
        }
        ASSERT_TRUE(writer->finish().has_value());
        const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
        std::printf("[ rate     ] %-8s %.2f M events/s (%d events in %.1f ms)\n", std::string(name_of(format)).c_str(),
                    event_count / elapsed.count() / 1e6, event_count, elapsed.count() * 1e3);
    }
    std::fclose(null_stream);
}

}  // namespace
}  // namespace ukp::tracer
