// One EventWriter over any formatter (formatters.hpp) and any sink
// (sink.hpp), and the factory that picks them.  The buffering policy lives
// here once:
//   1. write(): the formatter appends the event to the sink's buffer;
//   2. with flush_every_event, the buffer goes out and the stream is
//      fflush'ed now; otherwise only when it holds drain_threshold bytes;
//   3. finish(): the formatter closes the document, everything goes out.
#include <memory>

#include "tracer/output.hpp"
#include "tracer/output/formatters.hpp"
#include "tracer/output/sink.hpp"

namespace ukp::tracer {

namespace {

using output::Sink;

template <class Formatter>
class FormattingWriter final : public EventWriter {
public:
    FormattingWriter(Sink sink, WriterOptions options) : sink_(std::move(sink)), options_(options) {
        formatter_.begin(sink_.buffer());
    }
    FormattingWriter(const FormattingWriter&) = delete;
    FormattingWriter& operator=(const FormattingWriter&) = delete;

    ~FormattingWriter() override {
        if (!finished_) {
            (void)finish();  // no way to report from here; see EventWriter::finish
        }
    }

    Result<void> write(const DecodedEvent& event) override {
        if (finished_) {
            return make_error(Errc::InvalidArgument,
                              fmt::format("event '{}' written after the trace output was finished", event.event));
        }
        formatter_.event(sink_.buffer(), event);
        return options_.flush_every_event ? sink_.flush() : sink_.drain_if_full();
    }

    Result<void> flush() override { return sink_.flush(); }

    Result<void> finish() override {
        if (finished_) {
            return {};
        }
        finished_ = true;
        formatter_.end(sink_.buffer());
        return sink_.flush();
    }

private:
    Sink sink_;
    Formatter formatter_;
    WriterOptions options_;
    bool finished_ = false;
};

std::unique_ptr<EventWriter> make_writer_on(Format format, Sink sink, WriterOptions options) {
    switch (format) {
    case Format::Text:
        return std::make_unique<FormattingWriter<output::TextFormatter>>(std::move(sink), options);
    case Format::Json:
        return std::make_unique<FormattingWriter<output::JsonLinesFormatter>>(std::move(sink), options);
    case Format::Perfetto:
        return std::make_unique<FormattingWriter<output::PerfettoFormatter>>(std::move(sink), options);
    }
    return nullptr;  // not a Format value
}

}  // namespace

std::optional<Format> parse_format(std::string_view name) {
    for (const auto format : {Format::Text, Format::Json, Format::Perfetto}) {
        if (name == name_of(format)) {
            return format;
        }
    }
    return std::nullopt;
}

std::string_view name_of(Format format) {
    switch (format) {
    case Format::Text: return "text";
    case Format::Json: return "json";
    case Format::Perfetto: return "perfetto";
    }
    return "unknown";
}

std::unique_ptr<EventWriter> make_writer(Format format, std::FILE* stream, WriterOptions options) {
    return make_writer_on(format, Sink(stream), options);
}

std::unique_ptr<EventWriter> make_writer(Format format, int fd, WriterOptions options) {
    return make_writer_on(format, Sink(fd), options);
}

}  // namespace ukp::tracer
