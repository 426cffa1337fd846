// How writers hand bytes over: to a descriptor (partial writes, a full
// non-blocking pipe), flush policy, errors as values (EPIPE, write after
// finish), and the format names the command line uses.
#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include "output_test_support.hpp"

namespace ukp::tracer {
namespace {

using namespace testing;

std::string read_all(int fd) {
    std::string text;
    char chunk[4096];
    ssize_t got = 0;
    while ((got = ::read(fd, chunk, sizeof chunk)) > 0) {
        text.append(chunk, static_cast<std::size_t>(got));
    }
    return text;
}

// SIGPIPE ignored for the scope, so that EPIPE comes back as an error.
class IgnoredSigpipe {
public:
    IgnoredSigpipe() { previous_ = std::signal(SIGPIPE, SIG_IGN); }
    ~IgnoredSigpipe() { std::signal(SIGPIPE, previous_); }
    IgnoredSigpipe(const IgnoredSigpipe&) = delete;
    IgnoredSigpipe& operator=(const IgnoredSigpipe&) = delete;

private:
    void (*previous_)(int) = nullptr;
};

TEST(WriterFormat, NamesRoundTrip) {
    for (const auto format : {Format::Text, Format::Json, Format::Perfetto}) {
        EXPECT_EQ(parse_format(name_of(format)), format);
    }
    EXPECT_EQ(parse_format("JSON"), std::nullopt);
    EXPECT_EQ(parse_format(""), std::nullopt);
}

TEST(WriterSink, DescriptorGetsTheSameBytesAsAStream) {
    const int fd = ::memfd_create("ukprobe-output-test", 0);
    ASSERT_GE(fd, 0);
    {
        auto writer = make_writer(Format::Json, fd);
        ASSERT_TRUE(writer->write(entry_event()).has_value());
        ASSERT_TRUE(writer->write(return_event()).has_value());
        ASSERT_TRUE(writer->finish().has_value());
    }
    ASSERT_EQ(::lseek(fd, 0, SEEK_SET), 0);
    const std::vector<DecodedEvent> events = {entry_event(), return_event()};
    EXPECT_EQ(read_all(fd), render(Format::Json, events));
    ::close(fd);
}

TEST(WriterSink, FullNonBlockingPipeIsWaitedOn) {
    int ends[2];
    ASSERT_EQ(::pipe2(ends, O_CLOEXEC), 0);
    ASSERT_EQ(::fcntl(ends[1], F_SETFL, O_NONBLOCK), 0);
    std::string received;
    std::thread reader([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the pipe fill first
        received = read_all(ends[0]);
    });
    constexpr int event_count = 5000;  // ~500 KB of JSON, many times a pipe's 64 KiB
    {
        auto writer = make_writer(Format::Json, ends[1]);
        for (int i = 0; i < event_count; ++i) {
            auto written = writer->write(entry_event());
            ASSERT_TRUE(written.has_value()) << written.error().message;
        }
        ASSERT_TRUE(writer->finish().has_value());
    }
    ::close(ends[1]);
    reader.join();
    ::close(ends[0]);
    std::size_t lines = 0;
    for (const char c : received) {
        lines += c == '\n' ? 1 : 0;
    }
    EXPECT_EQ(lines, static_cast<std::size_t>(event_count));
    EXPECT_EQ(received.substr(0, received.find('\n') + 1), render(Format::Json, entry_event()));
}

TEST(WriterSink, ClosedPipeIsASystemErrorWithEpipe) {
    const IgnoredSigpipe ignored;
    int ends[2];
    ASSERT_EQ(::pipe2(ends, O_CLOEXEC), 0);
    ::close(ends[0]);
    auto writer = make_writer(Format::Text, ends[1], {.flush_every_event = true});
    auto written = writer->write(entry_event());
    ASSERT_FALSE(written.has_value());
    EXPECT_EQ(written.error().code, Errc::SystemError);
    EXPECT_EQ(written.error().system_errno, EPIPE);
    EXPECT_NE(written.error().message.find("descriptor"), std::string::npos) << written.error().message;
    (void)writer->finish();
    writer.reset();
    ::close(ends[1]);
}

TEST(WriterSink, WriteAfterFinishIsRefused) {
    const int fd = ::memfd_create("ukprobe-output-test", 0);
    ASSERT_GE(fd, 0);
    auto writer = make_writer(Format::Perfetto, fd);
    ASSERT_TRUE(writer->finish().has_value());
    auto written = writer->write(entry_event());
    ASSERT_FALSE(written.has_value());
    EXPECT_EQ(written.error().code, Errc::InvalidArgument);
    EXPECT_NE(written.error().message.find("myprobe"), std::string::npos);
    writer.reset();
    ::close(fd);
}

TEST(WriterSink, BuffersUntilFlushUnlessAskedToFlushEachEvent) {
    const int fd = ::memfd_create("ukprobe-output-test", 0);
    ASSERT_GE(fd, 0);
    // fstat, not lseek: the writer's write(2) calls use the file offset.
    const auto size_now = [&] {
        struct stat status {};
        EXPECT_EQ(::fstat(fd, &status), 0);
        return status.st_size;
    };
    {
        auto writer = make_writer(Format::Text, fd);
        ASSERT_TRUE(writer->write(entry_event()).has_value());
        EXPECT_EQ(size_now(), 0);  // one small event stays in the buffer
        ASSERT_TRUE(writer->flush().has_value());
        EXPECT_GT(size_now(), 0);
    }
    ASSERT_EQ(::ftruncate(fd, 0), 0);
    ASSERT_EQ(::lseek(fd, 0, SEEK_SET), 0);
    {
        auto writer = make_writer(Format::Text, fd, {.flush_every_event = true});
        ASSERT_TRUE(writer->write(entry_event()).has_value());
        EXPECT_EQ(size_now(), static_cast<off_t>(render(Format::Text, entry_event()).size()));
    }
    ::close(fd);
}

TEST(WriterSink, LargeOutputDrainsWithoutFlush) {
    const int fd = ::memfd_create("ukprobe-output-test", 0);
    ASSERT_GE(fd, 0);
    auto writer = make_writer(Format::Text, fd);
    for (int i = 0; i < 2000; ++i) {  // ~200 KB, past the 64 KiB drain threshold
        ASSERT_TRUE(writer->write(entry_event()).has_value());
    }
    struct stat status {};
    ASSERT_EQ(::fstat(fd, &status), 0);
    EXPECT_GT(status.st_size, 64 * 1024);
    writer.reset();
    ::close(fd);
}

}  // namespace
}  // namespace ukp::tracer
