// The Chrome Trace Event (Perfetto) writer: the whole document is parsed
// back and checked for what ui.perfetto.dev needs: instants for entries,
// complete slices for returns, thread and process names once, microsecond
// timestamps with exact nanoseconds, and a valid document whatever
// happened (no events, no finish() call).
#include <gtest/gtest.h>

#include "output_test_support.hpp"

namespace ukp::tracer {
namespace {

using namespace testing;

const Json& trace_events(const Json& document) { return document.at("traceEvents"); }

std::vector<const Json*> records_with_phase(const Json& document, std::string_view phase) {
    std::vector<const Json*> found;
    for (const auto& record : trace_events(document).items) {
        if (record.at("ph").text == phase) {
            found.push_back(&record);
        }
    }
    return found;
}

TEST(PerfettoWriter, ZeroEventsIsAValidEmptyTrace) {
    const std::string text = render(Format::Perfetto, std::span<const DecodedEvent>{});
    EXPECT_EQ(text, "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"producer\":\"ukprobe\"},\"traceEvents\":[\n\n]}\n");
    const Json document = must_parse(text);
    EXPECT_EQ(document.at("displayTimeUnit").text, "ns");
    EXPECT_TRUE(trace_events(document).items.empty());
}

TEST(PerfettoWriter, GoldenEntryAndReturn) {
    const std::vector<DecodedEvent> events = {entry_event(), return_event()};
    EXPECT_EQ(render(Format::Perfetto, events),
              "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"producer\":\"ukprobe\"},\"traceEvents\":[\n"
              "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":1234,\"tid\":1234,\"args\":{\"name\":\"bash\"}},\n"
              "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1234,\"tid\":1234,\"args\":{\"name\":\"bash\"}},\n"
              "{\"ph\":\"i\",\"s\":\"t\",\"name\":\"myprobe\",\"cat\":\"ukprobes\",\"ts\":12345678901.234,"
              "\"pid\":1234,\"tid\":1234,\"args\":{\"size\":\"0x10\",\"name\":\"abc\"}},\n"
              "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1234,\"tid\":1240,\"args\":{\"name\":\"worker\"}},\n"
              "{\"ph\":\"X\",\"name\":\"myretprobe\",\"cat\":\"ukprobes\",\"ts\":12345678901.234,\"dur\":1.500,"
              "\"pid\":1234,\"tid\":1240,\"args\":{\"ret\":\"0x55d0c0de0000\"}}\n"
              "]}\n");
}

TEST(PerfettoWriter, ReturnIsACompleteSliceFromItsEntry) {
    const Json document = must_parse(render(Format::Perfetto, return_event()));
    const auto slices = records_with_phase(document, "X");
    ASSERT_EQ(slices.size(), 1u);
    EXPECT_EQ(slices[0]->at("ts").text, "12345678901.234");
    EXPECT_EQ(slices[0]->at("dur").text, "1.500");
    EXPECT_EQ(slices[0]->at("name").text, "myretprobe");
    EXPECT_EQ(slices[0]->at("cat").text, "ukprobes");
}

TEST(PerfettoWriter, SubMicrosecondTimesKeepTheirNanoseconds) {
    DecodedEvent event = entry_event();
    event.timestamp_ns = 7;
    const Json document = must_parse(render(Format::Perfetto, event));
    EXPECT_EQ(records_with_phase(document, "i").at(0)->at("ts").text, "0.007");
}

TEST(PerfettoWriter, ThreadAndProcessAreNamedOnceAndAgainOnRename) {
    DecodedEvent main_thread = entry_event();
    DecodedEvent renamed = entry_event();
    renamed.comm = "bash-renamed";
    const std::vector<DecodedEvent> events = {main_thread, main_thread, return_event(), return_event(), renamed};
    const Json document = must_parse(render(Format::Perfetto, events));
    int process_names = 0;
    int thread_names = 0;
    for (const auto* record : records_with_phase(document, "M")) {
        (record->at("name").text == "process_name" ? process_names : thread_names) += 1;
    }
    EXPECT_EQ(process_names, 2);  // bash, then bash-renamed
    EXPECT_EQ(thread_names, 3);   // bash, worker, bash-renamed
    EXPECT_EQ(records_with_phase(document, "i").size(), 3u);
    EXPECT_EQ(records_with_phase(document, "X").size(), 2u);
}

TEST(PerfettoWriter, ProcessIsNotNamedAfterAnotherThread) {
    const Json document = must_parse(render(Format::Perfetto, return_event()));  // tid 1240 of pid 1234
    for (const auto* record : records_with_phase(document, "M")) {
        EXPECT_EQ(record->at("name").text, "thread_name");
    }
}

TEST(PerfettoWriter, FaultIsReadableTextInArgs) {
    DecodedEvent event = entry_event();
    event.fields = {{"p", fault_value()}, {"a", array_value({unsigned_value(1), fault_value()})}};
    const Json document = must_parse(render(Format::Perfetto, event));
    const Json& args = records_with_phase(document, "i").at(0)->at("args");
    EXPECT_EQ(args.at("p").text, "(fault)");
    EXPECT_EQ(args.at("a").items.at(1).text, "(fault)");
}

TEST(PerfettoWriter, HostileStringsStayValidJson) {
    DecodedEvent event = entry_event();
    event.comm = "t\"\x01\xfe";
    event.event = "ev\\";
    event.fields = {{"s", string_value("\xed\xa0\x80 \n \"")}};
    must_parse(render(Format::Perfetto, event));
}

TEST(PerfettoWriter, DestroyedWithoutFinishStillClosesTheDocument) {
    char* data = nullptr;
    std::size_t size = 0;
    std::FILE* stream = open_memstream(&data, &size);
    ASSERT_NE(stream, nullptr);
    {
        auto writer = make_writer(Format::Perfetto, stream);
        ASSERT_TRUE(writer->write(entry_event()).has_value());
    }
    std::fclose(stream);
    const std::string text(data, size);
    std::free(data);
    EXPECT_EQ(trace_events(must_parse(text)).items.size(), 3u);
}

TEST(PerfettoWriter, FinishTwiceClosesOnce) {
    char* data = nullptr;
    std::size_t size = 0;
    std::FILE* stream = open_memstream(&data, &size);
    ASSERT_NE(stream, nullptr);
    {
        auto writer = make_writer(Format::Perfetto, stream);
        ASSERT_TRUE(writer->finish().has_value());
        ASSERT_TRUE(writer->finish().has_value());
    }
    std::fclose(stream);
    const std::string text(data, size);
    std::free(data);
    must_parse(text);
}

TEST(PerfettoWriter, ManyEventsParse) {
    std::vector<DecodedEvent> events;
    for (int i = 0; i < 1000; ++i) {
        events.push_back(i % 2 == 0 ? entry_event() : return_event());
        events.back().tid += i % 7;
        events.back().timestamp_ns += static_cast<std::uint64_t>(i) * 1000;
    }
    const Json document = must_parse(render(Format::Perfetto, events));
    EXPECT_EQ(records_with_phase(document, "i").size() + records_with_phase(document, "X").size(), 1000u);
}

}  // namespace
}  // namespace ukp::tracer
