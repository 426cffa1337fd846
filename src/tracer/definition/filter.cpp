// `if FILTER`: the kernel's event-filter language (trace_events_filter.c)
// over one definition's fetch args, compiled once into a branch program.
//
// Facts this file relies on:
//  - The language: FIELD OP VALUE predicates; numbers take == != < <= > >=
//    and & (any common bit), strings (string, ustring, symstr and char
//    arrays) take == != and ~ (a shell glob; a leading '!' in the pattern
//    negates it, as filter_parse_regex() does); predicates combine with
//    ! && || and parentheses, && binding tighter than ||.  String values are
//    quoted with " or '.  Numbers are read with kstrtoll for signed fields
//    and kstrtoull otherwise (so -1 needs a signed field), then cut to the
//    field's width as the kernel's (type)pred->val cast does.
//  - Error messages are the kernel's filter messages.  The kernel puts its
//    caret one byte after some of them (it counts from ptr+1); we put it on
//    the first byte of the offending token.
//  - Filter::matches runs inside the traced program's probe handlers: no
//    allocation, no exception, no system call, no recursion.  So the filter
//    is compiled at parse time into one test per predicate, in source
//    order, each with the index of the next test when it holds and when it
//    does not; index N means "matches" and N+1 "does not".  Targets always
//    point forward, so a run is at most N steps.  This is the kernel's own
//    idea (its prog_entry array), built here from a small syntax tree.
//  - Parsing recursion is bounded: parentheses may nest max_depth deep and
//    a filter holds at most max_predicates tests.
#include <algorithm>
#include <string>

#include "tracer/definition/internal.hpp"

namespace ukp::tracer {

namespace {

enum class Operator : std::uint8_t { Equal, NotEqual, Less, LessEqual, Greater, GreaterEqual, BitAnd, Glob };
enum class Operand : std::uint8_t { Unsigned, Signed, String };

}  // namespace

struct Filter::Program {
    struct Test {
        std::uint32_t field;
        Operator op;
        Operand operand;
        bool negate;                 // ~ "!pattern"
        std::uint64_t number;        // Unsigned/Signed: the constant, cut to the field's width
        std::uint32_t text_offset;   // String: the pattern in `texts`
        std::uint32_t text_length;
        std::uint32_t when_true;     // next test; tests.size() = match, +1 = no match
        std::uint32_t when_false;
    };
    std::vector<Test> tests;
    std::string texts;
    std::vector<unsigned> fields;
};

namespace {

// lib/glob.c semantics: * ? [set] [!set] [^set] [a-z]; no escapes.  The
// single backtrack point for the last '*' makes this linear in practice and
// never worse than pattern * text.
struct ClassMatch {
    bool valid;    // the '[' starts a well-formed set
    bool matched;
    std::size_t next;
};

ClassMatch match_class(std::string_view pattern, std::size_t open, char c) noexcept {
    std::size_t i = open + 1;
    bool negated = false;
    if (i < pattern.size() && (pattern[i] == '!' || pattern[i] == '^')) {
        negated = true;
        ++i;
    }
    bool matched = false;
    bool first = true;
    while (i < pattern.size()) {
        const char p = pattern[i];
        if (p == ']' && !first) {
            return {true, matched != negated, i + 1};
        }
        first = false;
        if (i + 2 < pattern.size() && pattern[i + 1] == '-' && pattern[i + 2] != ']') {
            const auto low = static_cast<unsigned char>(p);
            const auto high = static_cast<unsigned char>(pattern[i + 2]);
            const auto value = static_cast<unsigned char>(c);
            matched = matched || (low <= value && value <= high);
            i += 3;
        } else {
            matched = matched || p == c;
            ++i;
        }
    }
    return {false, false, 0};
}

bool glob_match(std::string_view pattern, std::string_view text) noexcept {
    std::size_t p = 0;
    std::size_t t = 0;
    std::size_t star_pattern = std::string_view::npos;
    std::size_t star_text = 0;
    while (t < text.size()) {
        bool advanced = false;
        if (p < pattern.size()) {
            const char c = pattern[p];
            if (c == '*') {
                star_pattern = ++p;
                star_text = t;
                continue;
            }
            if (c == '?') {
                ++p;
                ++t;
                advanced = true;
            } else if (c == '[') {
                const auto set = match_class(pattern, p, text[t]);
                if (set.valid ? set.matched : text[t] == '[') {
                    p = set.valid ? set.next : p + 1;
                    ++t;
                    advanced = true;
                }
            } else if (c == text[t]) {
                ++p;
                ++t;
                advanced = true;
            }
        }
        if (!advanced) {
            if (star_pattern == std::string_view::npos) {
                return false;
            }
            p = star_pattern;
            t = ++star_text;
        }
    }
    while (p < pattern.size() && pattern[p] == '*') {
        ++p;
    }
    return p == pattern.size();
}

// One relational test on numbers of the field's signedness; anything else
// is the kernel's `&` (the bits in common).
template <class Number>
bool compare(Number a, Number b, Operator op) noexcept {
    switch (op) {
    case Operator::Equal: return a == b;
    case Operator::NotEqual: return a != b;
    case Operator::Less: return a < b;
    case Operator::LessEqual: return a <= b;
    case Operator::Greater: return a > b;
    case Operator::GreaterEqual: return a >= b;
    default: return (static_cast<std::uint64_t>(a) & static_cast<std::uint64_t>(b)) != 0;
    }
}

bool holds(const Filter::Program& program, const Filter::Program::Test& test,
           std::span<const Filter::Value> fields) noexcept {
    // A missing field, or one of the other kind, fails its predicate.
    if (test.field >= fields.size()) {
        return false;
    }
    const Filter::Value& value = fields[test.field];
    if (test.operand == Operand::String) {
        if (!value.is_string) {
            return false;
        }
        const std::string_view pattern(program.texts.data() + test.text_offset, test.text_length);
        switch (test.op) {
        case Operator::Equal:
            return value.string == pattern;
        case Operator::NotEqual:
            return value.string != pattern;
        default:
            return glob_match(pattern, value.string) != test.negate;
        }
    }
    if (value.is_string) {
        return false;
    }
    if (test.operand == Operand::Signed)
        return compare(static_cast<std::int64_t>(value.number), static_cast<std::int64_t>(test.number), test.op);
    return compare(value.number, test.number, test.op);
}

}  // namespace

Filter::Filter() = default;
Filter::Filter(Filter&&) noexcept = default;
Filter& Filter::operator=(Filter&&) noexcept = default;
Filter::~Filter() = default;
Filter::Filter(std::unique_ptr<Program> program) : program_(std::move(program)) {}

bool Filter::matches(std::span<const Value> fields) const noexcept {
    if (!program_) {
        return true;
    }
    const auto& tests = program_->tests;
    const auto count = static_cast<std::uint32_t>(tests.size());
    std::uint32_t i = 0;
    while (i < count) {
        const auto& test = tests[i];
        i = holds(*program_, test, fields) ? test.when_true : test.when_false;
    }
    return i == count;
}

std::vector<unsigned> Filter::fields_used() const { return program_ ? program_->fields : std::vector<unsigned>{}; }

namespace definition_detail {

namespace {

constexpr std::size_t max_depth = 32;
constexpr std::size_t max_predicates = 256;
constexpr std::size_t max_string_value = 256;  // MAX_FILTER_STR_VAL
constexpr std::size_t max_number_length = 24;  // the kernel's num_buf

// A node of the syntax tree; leaves are tests, numbered in source order.
struct Node {
    enum class Kind : std::uint8_t { Test, All, Any, Not } kind;
    std::uint32_t first_test;   // the first test in this subtree
    std::uint32_t first_child;  // All/Any/Not: children[first_child ...]
    std::uint32_t child_count;
};

class FilterParser {
public:
    FilterParser(std::string_view text, std::size_t base, const std::vector<FetchArg>& args)
        : text_(text), base_(base), args_(args), program_(std::make_unique<Filter::Program>()) {}

    std::expected<Filter, ErrorAt> parse() {
        if (const auto failure = check_balance()) {
            return std::unexpected(*failure);
        }
        auto root = parse_any();
        if (!root) {
            return std::unexpected(root.error());
        }
        skip_spaces();
        if (at_ < text_.size()) {
            return std::unexpected(error(Code::FilterTooManyPreds, at_));
        }
        const auto count = static_cast<std::uint32_t>(program_->tests.size());
        assign_targets(*root, count, count + 1);
        for (const auto& test : program_->tests) {
            program_->fields.push_back(test.field);
        }
        auto& fields = program_->fields;
        std::sort(fields.begin(), fields.end());
        fields.erase(std::unique(fields.begin(), fields.end()), fields.end());
        return Filter(std::move(program_));
    }

private:
    ErrorAt error(Code code, std::size_t offset) const { return ErrorAt{code, base_ + offset}; }

    void skip_spaces() {
        while (at_ < text_.size() && is_space(text_[at_])) {
            ++at_;
        }
    }
    bool next_is(std::string_view token) const { return text_.substr(at_).starts_with(token); }

    // The kernel's calc_stack(): quotes and parentheses must balance before
    // anything else is read, which also bounds what the parser must expect.
    Failure check_balance() const {
        std::vector<std::size_t> open;
        char quote = 0;
        std::size_t quote_at = 0;
        for (std::size_t i = 0; i < text_.size(); ++i) {
            const char c = text_[i];
            if (quote != 0) {
                if (c == quote) {
                    quote = 0;
                }
                continue;
            }
            if (c == '"' || c == '\'') {
                quote = c;
                quote_at = i;
            } else if (c == '(') {
                open.push_back(i);
            } else if (c == ')') {
                if (open.empty()) {
                    return error(Code::FilterTooManyClose, i);
                }
                open.pop_back();
            }
        }
        if (quote != 0) {
            return error(Code::FilterMissingQuote, quote_at);
        }
        if (!open.empty()) {
            return error(Code::FilterTooManyOpen, open.back());
        }
        return std::nullopt;
    }

    std::uint32_t add_node(Node node) {
        nodes_.push_back(node);
        return static_cast<std::uint32_t>(nodes_.size() - 1);
    }

    std::uint32_t add_group(Node::Kind kind, const std::vector<std::uint32_t>& members) {
        const auto first = static_cast<std::uint32_t>(children_.size());
        children_.insert(children_.end(), members.begin(), members.end());
        return add_node(Node{kind, nodes_[members.front()].first_test, first,
                             static_cast<std::uint32_t>(members.size())});
    }

    // any := all ('||' all)*      all := unary ('&&' unary)*
    std::expected<std::uint32_t, ErrorAt> parse_any() { return parse_chain("||", Node::Kind::Any, &FilterParser::parse_all); }
    std::expected<std::uint32_t, ErrorAt> parse_all() { return parse_chain("&&", Node::Kind::All, &FilterParser::parse_unary); }

    std::expected<std::uint32_t, ErrorAt> parse_chain(std::string_view op, Node::Kind kind,
                                                      std::expected<std::uint32_t, ErrorAt> (FilterParser::*operand)()) {
        std::vector<std::uint32_t> members;
        for (;;) {
            auto member = (this->*operand)();
            if (!member) {
                return member;
            }
            members.push_back(*member);
            skip_spaces();
            if (!next_is(op)) {
                break;
            }
            at_ += op.size();
        }
        return members.size() == 1 ? members.front() : add_group(kind, members);
    }

    // unary := '!'* ( '(' any ')' | predicate ).  "!=" and "!~" are not '!'.
    std::expected<std::uint32_t, ErrorAt> parse_unary() {
        bool negated = false;
        skip_spaces();
        while (at_ < text_.size() && text_[at_] == '!' &&
               !(at_ + 1 < text_.size() && (text_[at_ + 1] == '=' || text_[at_ + 1] == '~'))) {
            negated = !negated;
            ++at_;
            skip_spaces();
        }
        std::expected<std::uint32_t, ErrorAt> inner = 0u;
        if (at_ < text_.size() && text_[at_] == '(') {
            if (depth_ == max_depth) {
                return std::unexpected(error(Code::FilterTooDeep, at_));
            }
            ++depth_;
            ++at_;
            inner = parse_any();
            if (!inner) {
                return inner;
            }
            skip_spaces();
            if (at_ >= text_.size() || text_[at_] != ')') {
                return std::unexpected(error(Code::FilterTooManyPreds, at_));
            }
            ++at_;
            --depth_;
        } else {
            inner = parse_predicate();
            if (!inner) {
                return inner;
            }
        }
        if (!negated) {
            return inner;
        }
        const auto child = static_cast<std::uint32_t>(children_.size());
        children_.push_back(*inner);
        return add_node(Node{Node::Kind::Not, nodes_[*inner].first_test, child, 1});
    }

    std::expected<std::uint32_t, ErrorAt> parse_predicate() {
        const std::size_t field_at = at_;
        while (at_ < text_.size() && (is_alnum(text_[at_]) || text_[at_] == '_')) {
            ++at_;
        }
        if (at_ == field_at) {
            return std::unexpected(error(Code::FilterInvalid, field_at));
        }
        if (program_->tests.size() == max_predicates) {
            return std::unexpected(error(Code::FilterTooManyPreds, field_at));
        }
        const std::string_view name = text_.substr(field_at, at_ - field_at);
        const auto arg = std::find_if(args_.begin(), args_.end(), [&](const FetchArg& a) { return a.name == name; });
        if (arg == args_.end()) {
            return std::unexpected(error(Code::FilterFieldNotFound, field_at));
        }
        const FetchType& type = arg->type;
        const bool is_string_field = type.kind == FetchType::Kind::String || type.kind == FetchType::Kind::UString ||
                                     type.kind == FetchType::Kind::SymbolString ||
                                     (type.kind == FetchType::Kind::Char && type.array_length != 0);
        if (!is_string_field && type.array_length != 0) {
            return std::unexpected(error(Code::FilterIllegalFieldOp, field_at));
        }

        skip_spaces();
        // Longest first where one operator is a prefix of another.
        static constexpr std::pair<std::string_view, Operator> operators[] = {
            {"~", Operator::Glob},       {"!=", Operator::NotEqual},  {"==", Operator::Equal},
            {"<=", Operator::LessEqual}, {"<", Operator::Less},       {">=", Operator::GreaterEqual},
            {">", Operator::Greater},    {"&", Operator::BitAnd},
        };
        const auto op = std::find_if(std::begin(operators), std::end(operators),
                                     [&](const auto& candidate) { return next_is(candidate.first); });
        if (op == std::end(operators)) {
            return std::unexpected(error(Code::FilterInvalidOp, at_));
        }
        at_ += op->first.size();
        skip_spaces();

        Filter::Program::Test test{};
        test.field = static_cast<std::uint32_t>(arg - args_.begin());
        test.op = op->second;
        const std::size_t value_at = at_;
        const char first = at_ < text_.size() ? text_[at_] : '\0';
        if (first == '"' || first == '\'') {
            if (test.op != Operator::Equal && test.op != Operator::NotEqual && test.op != Operator::Glob) {
                return std::unexpected(error(Code::FilterIllegalFieldOp, value_at));
            }
            if (!is_string_field) {
                return std::unexpected(error(Code::FilterExpectDigit, value_at));
            }
            const auto close = text_.find(first, at_ + 1);
            if (close == std::string_view::npos) {
                return std::unexpected(error(Code::FilterMissingQuote, value_at));
            }
            std::string_view pattern = text_.substr(at_ + 1, close - at_ - 1);
            if (pattern.size() >= max_string_value) {
                return std::unexpected(error(Code::FilterOperandTooLong, value_at));
            }
            if (test.op == Operator::Glob && pattern.starts_with('!')) {
                test.negate = true;
                pattern.remove_prefix(1);
            }
            test.operand = Operand::String;
            test.text_offset = static_cast<std::uint32_t>(program_->texts.size());
            test.text_length = static_cast<std::uint32_t>(pattern.size());
            program_->texts.append(pattern);
            at_ = close + 1;
        } else if (is_digit(first) || (first == '-' && at_ + 1 < text_.size() && is_digit(text_[at_ + 1]))) {
            if (is_string_field) {
                return std::unexpected(error(Code::FilterExpectString, value_at));
            }
            if (test.op == Operator::Glob) {
                return std::unexpected(error(Code::FilterIllegalFieldOp, value_at));
            }
            at_ += first == '-' ? 1 : 0;
            while (at_ < text_.size() && is_alnum(text_[at_])) {
                ++at_;
            }
            const std::string_view number = text_.substr(value_at, at_ - value_at);
            if (number.size() >= max_number_length) {
                return std::unexpected(error(Code::FilterOperandTooLong, value_at));
            }
            const bool is_signed = type.kind == FetchType::Kind::Signed;
            std::uint64_t value = 0;
            if (is_signed) {
                const auto parsed = parse_signed(number);
                if (!parsed) {
                    return std::unexpected(error(Code::FilterIllegalIntval, value_at));
                }
                value = static_cast<std::uint64_t>(*parsed);
            } else {
                const auto parsed = parse_unsigned(number);
                if (!parsed) {
                    return std::unexpected(error(Code::FilterIllegalIntval, value_at));
                }
                value = *parsed;
            }
            // The fetched value arrives extended from the field's width;
            // the constant is cut to that width and extended the same way.
            const unsigned bits = std::min(type.size, 8u) * 8;
            if (bits < 64) {
                value &= (std::uint64_t{1} << bits) - 1;
                if (is_signed && (value >> (bits - 1)) != 0) {
                    value |= ~((std::uint64_t{1} << bits) - 1);
                }
            }
            test.operand = is_signed ? Operand::Signed : Operand::Unsigned;
            test.number = value;
        } else {
            return std::unexpected(error(Code::FilterInvalidValue, value_at));
        }
        program_->tests.push_back(test);
        return add_node(Node{Node::Kind::Test, static_cast<std::uint32_t>(program_->tests.size() - 1), 0, 0});
    }

    // Short-circuit targets: a member of an all-group that fails jumps to
    // the group's "false"; one that holds goes on to the next member's
    // first test.  Any-groups mirror that, and Not swaps the two targets.
    void assign_targets(std::uint32_t index, std::uint32_t when_true, std::uint32_t when_false) {
        const Node node = nodes_[index];
        switch (node.kind) {
        case Node::Kind::Test:
            program_->tests[node.first_test].when_true = when_true;
            program_->tests[node.first_test].when_false = when_false;
            return;
        case Node::Kind::Not:
            assign_targets(children_[node.first_child], when_false, when_true);
            return;
        case Node::Kind::All:
        case Node::Kind::Any:
            for (std::uint32_t i = 0; i < node.child_count; ++i) {
                const auto child = children_[node.first_child + i];
                if (i + 1 == node.child_count) {
                    assign_targets(child, when_true, when_false);
                    break;
                }
                const auto next = nodes_[children_[node.first_child + i + 1]].first_test;
                if (node.kind == Node::Kind::All) {
                    assign_targets(child, next, when_false);
                } else {
                    assign_targets(child, when_true, next);
                }
            }
            return;
        }
    }

    std::string_view text_;
    std::size_t base_;
    const std::vector<FetchArg>& args_;
    std::unique_ptr<Filter::Program> program_;
    std::vector<Node> nodes_;
    std::vector<std::uint32_t> children_;
    std::size_t at_ = 0;
    std::size_t depth_ = 0;
};

}  // namespace

std::expected<Filter, ErrorAt> parse_filter(std::string_view text, std::size_t position,
                                            const std::vector<FetchArg>& args) {
    return FilterParser(text, position, args).parse();
}

}  // namespace definition_detail
}  // namespace ukp::tracer
