// See decoder.hpp.  The record layout is session.hpp's field_layout(), as
// the agent's hit path (src/tracer/agent/hit.cpp) wrote it.
#include "tracer/cli/decoder.hpp"

#include <dirent.h>
#include <fmt/format.h>

#include <cstring>
#include <fstream>

namespace ukp::tracer::cli {

namespace {

std::string read_comm(int pid, int tid) {
    std::ifstream file(fmt::format("/proc/{}/task/{}/comm", pid, tid));
    std::string name;
    if (!std::getline(file, name)) return {};
    return name;
}

}  // namespace

const std::string& Decoder::comm_of(int pid, int tid) {
    auto found = comms_.find(tid);
    if (found != comms_.end()) return found->second;
    std::string name = read_comm(pid, tid);
    if (name.empty()) {
        auto learned = learned_.find(tid);
        name = learned != learned_.end() ? learned->second : "<...>";  // the kernel's placeholder
    }  // the kernel's placeholder for an unknown comm
    return comms_.emplace(tid, std::move(name)).first->second;
}

void Decoder::learn_comm(int tid, std::string_view name) {
    if (tid > 0 && !name.empty()) learned_.try_emplace(tid, name);
}

void Decoder::remember_threads(int pid) {
    DIR* tasks = opendir(fmt::format("/proc/{}/task", pid).c_str());
    if (tasks == nullptr) return;
    while (dirent* entry = readdir(tasks)) {
        int tid = std::atoi(entry->d_name);
        if (tid <= 0) continue;
        // Names change (pthread_setname_np): keep the latest.
        if (std::string name = read_comm(pid, tid); !name.empty()) comms_[tid] = std::move(name);
    }
    closedir(tasks);
}

bool Decoder::decode(const RecordHeader& header, std::span<const std::uint8_t> bytes, DecodedEvent* out) {
    if (header.event >= session_.header().event_count.load(std::memory_order_acquire)) return false;
    const EventEntry& entry = session_.event(header.event);
    if (entry.definition >= definitions_.size()) return false;
    const Definition& definition = definitions_[entry.definition];
    std::size_t bitmap_bytes = (definition.args.size() + 63) / 64 * 8;
    std::size_t at = sizeof(RecordHeader) + bitmap_bytes;
    if (at > bytes.size()) return false;
    const std::uint8_t* bitmap = bytes.data() + sizeof(RecordHeader);

    out->group = entry.group;
    out->event = entry.event;
    out->is_return = entry.is_return != 0;
    out->timestamp_ns = session_.to_nanoseconds(header.timestamp);
    out->entry_timestamp_ns = header.entry_timestamp != 0 ? session_.to_nanoseconds(header.entry_timestamp) : 0;
    out->pid = header.pid;
    out->tid = header.tid;
    out->cpu = header.cpu;
    out->comm = comm_of(header.pid, header.tid);
    std::string_view function(entry.function);
    if (out->is_return) {
        std::string_view callee = function.substr(0, function.find('+'));
        location_ = symbolizer_.name(header.location) + " <- " + std::string(callee);
    } else {
        location_ = function;
    }
    out->location = location_;
    out->fields.clear();
    for (std::size_t i = 0; i < definition.args.size(); ++i) {
        const FetchArg& arg = definition.args[i];
        bool faulted = (bitmap[i / 8] >> (i % 8)) & 1;
        Field field{arg.name, {}};
        FieldLayout layout = field_layout(arg);
        if (layout == FieldLayout::Strings) {
            field.value.kind = FieldValue::Kind::Array;
            for (unsigned k = 0; k < arg.type.array_length; ++k) {
                std::uint16_t length;
                if (at + 2 > bytes.size()) return false;
                std::memcpy(&length, bytes.data() + at, 2);
                at += 2;
                if (at + length > bytes.size()) return false;
                FieldValue element;
                element.kind = FieldValue::Kind::String;
                element.text.assign(reinterpret_cast<const char*>(bytes.data() + at), length);
                at += length;
                field.value.elements.push_back(std::move(element));
            }
            if (faulted) field.value.kind = FieldValue::Kind::Fault, field.value.elements.clear();
            out->fields.push_back(std::move(field));
            continue;
        }
        if (layout == FieldLayout::String) {
            std::uint16_t length;
            if (at + 2 > bytes.size()) return false;
            std::memcpy(&length, bytes.data() + at, 2);
            at += 2;
            if (at + length > bytes.size()) return false;
            field.value.kind = faulted ? FieldValue::Kind::Fault : FieldValue::Kind::String;
            field.value.text.assign(reinterpret_cast<const char*>(bytes.data() + at), length);
            at += length;
            out->fields.push_back(std::move(field));
            continue;
        }
        unsigned count = arg.type.array_length == 0 ? 1 : std::min(arg.type.array_length, 64u);
        if (at + 8u * count > bytes.size()) return false;
        auto element = [&](std::uint64_t value) {
            FieldValue result;
            result.number = value;
            result.size = arg.type.size == 0 ? 8 : arg.type.size;
            switch (arg.type.kind) {
            case FetchType::Kind::Unsigned:
            case FetchType::Kind::Bitfield: result.kind = FieldValue::Kind::Unsigned; break;
            case FetchType::Kind::Signed: result.kind = FieldValue::Kind::Signed; break;
            case FetchType::Kind::Hex: result.kind = FieldValue::Kind::Hex; break;
            case FetchType::Kind::Char: result.kind = FieldValue::Kind::Char; break;
            case FetchType::Kind::SymbolAddress:
                result.kind = FieldValue::Kind::Symbol;
                result.text = symbolizer_.name(value, true);
                break;
            case FetchType::Kind::SymbolString:
                result.kind = FieldValue::Kind::String;
                result.text = symbolizer_.name(value);
                break;
            default: result.kind = FieldValue::Kind::Hex; break;
            }
            return result;
        };
        if (faulted) {
            field.value.kind = FieldValue::Kind::Fault;
        } else if (arg.type.array_length == 0) {
            std::uint64_t value;
            std::memcpy(&value, bytes.data() + at, 8);
            field.value = element(value);
        } else {
            field.value.kind = FieldValue::Kind::Array;
            for (unsigned k = 0; k < count; ++k) {
                std::uint64_t value;
                std::memcpy(&value, bytes.data() + at + 8u * k, 8);
                field.value.elements.push_back(element(value));
            }
        }
        at += 8u * count;
        out->fields.push_back(std::move(field));
    }
    return true;
}

}  // namespace ukp::tracer::cli
