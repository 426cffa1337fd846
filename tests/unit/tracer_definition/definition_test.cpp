// Focused tests of the definition parser: what each place, fetch root and
// type becomes, how names are derived, how errors are shown.  golden.txt
// covers acceptance and error positions line by line.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "tracer/definition.hpp"

namespace ukp::tracer {
namespace {

Definition parse_ok(std::string_view command) {
    auto result = parse_definition(command);
    if (!result) {
        ADD_FAILURE() << "refused: " << format_error(result.error());
        return Definition{};
    }
    return std::move(*result);
}

FetchArg only_arg(std::string_view command) {
    Definition definition = parse_ok(command);
    if (definition.args.size() != 1) {
        ADD_FAILURE() << command << ": " << definition.args.size() << " args";
        return FetchArg{};
    }
    return definition.args[0];
}

unsigned register_index(std::string_view name) {
    const auto names = register_names();
    for (unsigned i = 0; i < names.size(); ++i) {
        if (names[i] == name) {
            return i;
        }
    }
    ADD_FAILURE() << "no register " << name;
    return 0;
}

// --- Places ---------------------------------------------------------------

TEST(DefinitionPlace, SymbolWithOffsetAndDefaults) {
    const auto definition = parse_ok("p malloc+0x10");
    EXPECT_EQ(definition.type, ProbeType::Entry);
    EXPECT_EQ(definition.group, "");
    EXPECT_FALSE(definition.event_given);
    EXPECT_EQ(definition.place.form, Place::Form::Symbol);
    EXPECT_EQ(definition.place.module, "");
    EXPECT_EQ(definition.place.symbol, "malloc");
    EXPECT_EQ(definition.place.offset, 16u);
    EXPECT_FALSE(definition.place.glob);
    EXPECT_EQ(definition.place.position, 2u);
    EXPECT_EQ(definition.command, "p malloc+0x10");
}

TEST(DefinitionPlace, ModuleSymbol) {
    const auto definition = parse_ok("p libc.so.6:malloc");
    EXPECT_EQ(definition.place.form, Place::Form::Symbol);
    EXPECT_EQ(definition.place.module, "libc.so.6");
    EXPECT_EQ(definition.place.symbol, "malloc");
}

TEST(DefinitionPlace, PathSymbolSplitsAtTheLastColon) {
    const auto definition = parse_ok("r /opt/a:b/libx.so:do_it");
    EXPECT_EQ(definition.type, ProbeType::Return);
    EXPECT_EQ(definition.place.form, Place::Form::Symbol);
    EXPECT_EQ(definition.place.module, "/opt/a:b/libx.so");
    EXPECT_EQ(definition.place.symbol, "do_it");
    EXPECT_EQ(definition.event, "r_libx_do_it_0");
}

TEST(DefinitionPlace, FileOffsetWithReturnAndReferenceCounter) {
    const auto definition = parse_ok("p /bin/bash:0x4245c0%return(0x10)");
    EXPECT_EQ(definition.type, ProbeType::Return);
    EXPECT_EQ(definition.place.form, Place::Form::FileOffset);
    EXPECT_EQ(definition.place.module, "/bin/bash");
    EXPECT_EQ(definition.place.offset, 0x4245c0u);
    ASSERT_TRUE(definition.place.reference_counter_offset.has_value());
    EXPECT_EQ(*definition.place.reference_counter_offset, 0x10u);
    EXPECT_EQ(definition.event, "p_bash_0x4245c0");
}

TEST(DefinitionPlace, ModuleFileOffset) {
    const auto definition = parse_ok("p libc.so.6:1234");
    EXPECT_EQ(definition.place.form, Place::Form::FileOffset);
    EXPECT_EQ(definition.place.module, "libc.so.6");
    EXPECT_EQ(definition.place.offset, 1234u);
    EXPECT_FALSE(definition.place.reference_counter_offset.has_value());
}

TEST(DefinitionPlace, AbsoluteAddress) {
    const auto definition = parse_ok("r 0x7f0000001000");
    EXPECT_EQ(definition.place.form, Place::Form::Address);
    EXPECT_EQ(definition.place.address, 0x7f0000001000u);
    EXPECT_EQ(definition.event, "r_0x7f0000001000");
}

TEST(DefinitionPlace, GlobWithGroupOnly) {
    const auto definition = parse_ok("p:zlib/ libz.so.1:deflate*");
    EXPECT_TRUE(definition.place.glob);
    EXPECT_EQ(definition.group, "zlib");
    EXPECT_FALSE(definition.event_given);
    Place match = definition.place;
    match.symbol = "deflateInit2_";
    match.glob = false;
    EXPECT_EQ(derive_event_name(definition.type, match), "p_libz_so_1_deflateInit2__0");
}

TEST(DefinitionPlace, MaxactiveAndRemoval) {
    const auto definition = parse_ok("r32:grp/ev vfs_read");
    EXPECT_EQ(definition.maxactive, 32);
    EXPECT_EQ(definition.group, "grp");
    EXPECT_EQ(definition.event, "ev");
    EXPECT_TRUE(definition.event_given);

    const auto removal = parse_ok("-:grp/ev");
    EXPECT_EQ(removal.type, ProbeType::Remove);
    EXPECT_EQ(removal.group, "grp");
    EXPECT_EQ(removal.event, "ev");
}

TEST(DefinitionPlace, WhitespaceAroundTokensKeepsRealPositions) {
    const auto result = parse_definition("  p\t vfs_read    %none");
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().message, "Invalid register name");
    EXPECT_EQ(result.error().position, 17u);
}

// --- Event names ------------------------------------------------------------

TEST(DefinitionEventName, DerivedAsTheKernelDerivesThem) {
    EXPECT_EQ(parse_ok("p vfs_read").event, "p_vfs_read_0");
    EXPECT_EQ(parse_ok("r vfs_read").event, "r_vfs_read_0");
    EXPECT_EQ(parse_ok("p vfs_read+16").event, "p_vfs_read_16");
    EXPECT_EQ(parse_ok("p foo.cold").event, "p_foo_cold_0");
    EXPECT_EQ(parse_ok("p mod:sym").event, "p_mod_sym_0");
    // uprobes: the basename cut at its first '.', '-' or '_', and 'p' even
    // for a return probe, as trace_uprobe.c writes it.
    EXPECT_EQ(parse_ok("r /usr/lib/libssl.so.3:0x1f00").event, "p_libssl_0x1f00");
    EXPECT_EQ(parse_ok("p /usr/bin/python3-dbg:16").event, "p_python3_0x10");
}

TEST(DefinitionEventName, LongNamesAreCutTo63Bytes) {
    const std::string symbol(100, 'a');
    const auto definition = parse_ok("p " + symbol);
    EXPECT_EQ(definition.event.size(), 63u);
    EXPECT_EQ(definition.event, "p_" + std::string(61, 'a'));
}

TEST(DefinitionEventName, GivenNamesAtTheLimit) {
    const std::string name63(63, 'e');
    EXPECT_EQ(parse_ok("p:" + name63 + " f").event, name63);
    EXPECT_FALSE(parse_definition("p:" + name63 + "e f").has_value());
    const std::string group63(63, 'g');
    EXPECT_EQ(parse_ok("p:" + group63 + "/e f").group, group63);
}

// --- Fetch roots ------------------------------------------------------------

TEST(DefinitionFetchRoot, RegisterAndAliases) {
    const auto arg = only_arg("p f %di");
    EXPECT_EQ(arg.root, FetchRoot::Register);
    EXPECT_EQ(arg.register_index, register_index("di"));
    EXPECT_EQ(arg.name, "arg1");
    EXPECT_EQ(arg.position, 4u);
    EXPECT_EQ(only_arg("p f %rdi").register_index, register_index("di"));
    EXPECT_EQ(only_arg("p f %rip").register_index, register_index("ip"));
    EXPECT_EQ(only_arg("p f %eflags").register_index, register_index("flags"));
    EXPECT_EQ(only_arg("p f %r15").register_index, 0u);
    EXPECT_EQ(only_arg("p f %ss").register_index, 20u);
    EXPECT_EQ(register_names().size(), 21u);
}

TEST(DefinitionFetchRoot, MemoryAtAddress) {
    const auto arg = only_arg("p f @0x1000");
    EXPECT_EQ(arg.root, FetchRoot::Memory);
    EXPECT_EQ(arg.address, 0x1000u);
    EXPECT_TRUE(arg.derefs.empty());
}

TEST(DefinitionFetchRoot, MemoryAtSymbol) {
    const auto arg = only_arg("p f @counter-8");
    EXPECT_EQ(arg.root, FetchRoot::Symbol);
    EXPECT_EQ(arg.symbol, "counter");
    EXPECT_EQ(arg.symbol_offset, -8);
}

TEST(DefinitionFetchRoot, FileOffsetNeedsAFile) {
    const auto arg = only_arg("p /bin/sh:0x10 @+0x2000");
    EXPECT_EQ(arg.root, FetchRoot::FileOffset);
    EXPECT_EQ(arg.address, 0x2000u);
    EXPECT_FALSE(parse_definition("p f @+0x2000").has_value());
}

TEST(DefinitionFetchRoot, StackEntryAndPointer) {
    const auto entry = only_arg("p f $stack3");
    EXPECT_EQ(entry.root, FetchRoot::StackEntry);
    EXPECT_EQ(entry.index, 3u);
    EXPECT_EQ(only_arg("p f $stack").root, FetchRoot::StackPointer);
}

TEST(DefinitionFetchRoot, ArgumentOneBased) {
    const auto arg = only_arg("p f $arg7");
    EXPECT_EQ(arg.root, FetchRoot::Argument);
    EXPECT_EQ(arg.index, 7u);
    // In a return probe, $argN is the value the argument had at entry.
    EXPECT_EQ(only_arg("r f $arg1").root, FetchRoot::Argument);
}

TEST(DefinitionFetchRoot, ReturnValueOnlyOnReturn) {
    EXPECT_EQ(only_arg("r f $retval").root, FetchRoot::ReturnValue);
    EXPECT_EQ(only_arg("p f%return $retval").root, FetchRoot::ReturnValue);
    const auto refused = parse_definition("p f $retval");
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().message, "$retval is not available on probe");
}

TEST(DefinitionFetchRoot, CommDefaultsToString) {
    const auto arg = only_arg("p f $comm");
    EXPECT_EQ(arg.root, FetchRoot::Comm);
    EXPECT_EQ(arg.type.kind, FetchType::Kind::String);
    EXPECT_FALSE(arg.type.given);
}

TEST(DefinitionFetchRoot, Immediates) {
    EXPECT_EQ(only_arg("p f \\0x10").address, 0x10u);
    EXPECT_EQ(only_arg("p f \\-1").address, ~std::uint64_t{0});
    EXPECT_EQ(only_arg("p f \\-1").root, FetchRoot::Immediate);
    const auto text = only_arg("p f msg=\\\"two words: if\"");
    EXPECT_EQ(text.root, FetchRoot::StringImmediate);
    EXPECT_EQ(text.string_value, "two words: if");
    EXPECT_EQ(text.name, "msg");
    EXPECT_EQ(text.type.kind, FetchType::Kind::String);
}

TEST(DefinitionFetchRoot, NestedDereferencesInnermostFirst) {
    const auto arg = only_arg("p f +0x10(-8(+u4(%si)))");
    EXPECT_EQ(arg.root, FetchRoot::Register);
    EXPECT_EQ(arg.register_index, register_index("si"));
    ASSERT_EQ(arg.derefs.size(), 3u);
    EXPECT_EQ(arg.derefs[0].offset, 4);
    EXPECT_TRUE(arg.derefs[0].user);
    EXPECT_EQ(arg.derefs[1].offset, -8);
    EXPECT_FALSE(arg.derefs[1].user);
    EXPECT_EQ(arg.derefs[2].offset, 0x10);
}

TEST(DefinitionFetchRoot, DereferenceOfMemory) {
    const auto arg = only_arg("p f +8(@0x1000)");
    EXPECT_EQ(arg.root, FetchRoot::Memory);
    ASSERT_EQ(arg.derefs.size(), 1u);
    EXPECT_EQ(arg.derefs[0].offset, 8);
}

// --- Types ------------------------------------------------------------------

struct TypeCase {
    const char* text;
    FetchType::Kind kind;
    unsigned size;
};

TEST(DefinitionType, EveryNamedType) {
    const TypeCase cases[] = {
        {"u8", FetchType::Kind::Unsigned, 1},   {"u16", FetchType::Kind::Unsigned, 2},
        {"u32", FetchType::Kind::Unsigned, 4},  {"u64", FetchType::Kind::Unsigned, 8},
        {"s8", FetchType::Kind::Signed, 1},     {"s16", FetchType::Kind::Signed, 2},
        {"s32", FetchType::Kind::Signed, 4},    {"s64", FetchType::Kind::Signed, 8},
        {"x8", FetchType::Kind::Hex, 1},        {"x16", FetchType::Kind::Hex, 2},
        {"x32", FetchType::Kind::Hex, 4},       {"x64", FetchType::Kind::Hex, 8},
        {"char", FetchType::Kind::Char, 1},     {"string", FetchType::Kind::String, 0},
        {"ustring", FetchType::Kind::UString, 0}, {"symstr", FetchType::Kind::SymbolString, 0},
        {"symbol", FetchType::Kind::SymbolAddress, 8},
    };
    for (const auto& c : cases) {
        const auto arg = only_arg(std::string("p f +0(%di):") + c.text);
        EXPECT_EQ(arg.type.kind, c.kind) << c.text;
        EXPECT_EQ(arg.type.size, c.size) << c.text;
        EXPECT_TRUE(arg.type.given) << c.text;
        EXPECT_EQ(arg.type.array_length, 0u) << c.text;
    }
}

TEST(DefinitionType, DefaultIsX64) {
    const auto arg = only_arg("p f %ax");
    EXPECT_EQ(arg.type.kind, FetchType::Kind::Hex);
    EXPECT_EQ(arg.type.size, 8u);
    EXPECT_FALSE(arg.type.given);
}

TEST(DefinitionType, Bitfield) {
    const auto arg = only_arg("p f +0(%di):b3@0x4/16");
    EXPECT_EQ(arg.type.kind, FetchType::Kind::Bitfield);
    EXPECT_EQ(arg.type.size, 2u);
    EXPECT_EQ(arg.type.bit_width, 3u);
    EXPECT_EQ(arg.type.bit_offset, 4u);
}

TEST(DefinitionType, Arrays) {
    const auto numbers = only_arg("p f +0(%di):s16[0x10]");
    EXPECT_EQ(numbers.type.kind, FetchType::Kind::Signed);
    EXPECT_EQ(numbers.type.array_length, 16u);
    const auto strings = only_arg("p f +0(%di):string[3]");
    EXPECT_EQ(strings.type.kind, FetchType::Kind::String);
    EXPECT_EQ(strings.type.array_length, 3u);
    EXPECT_EQ(only_arg("p f +0(%di):u8[64]").type.array_length, 64u);
    EXPECT_FALSE(parse_definition("p f +0(%di):u8[65]").has_value());
}

TEST(DefinitionType, ArgNamesDefaultByPosition) {
    const auto definition = parse_ok("p f %ax x=%bx %cx");
    ASSERT_EQ(definition.args.size(), 3u);
    EXPECT_EQ(definition.args[0].name, "arg1");
    EXPECT_EQ(definition.args[1].name, "x");
    EXPECT_EQ(definition.args[2].name, "arg3");
}

TEST(DefinitionType, ArgLimits) {
    std::string command = "p f";
    for (int i = 0; i < 128; ++i) {
        command += " %ax";
    }
    EXPECT_EQ(parse_ok(command).args.size(), 128u);
    const auto refused = parse_definition(command + " %ax");
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().message, "Too many arguments are specified");
    EXPECT_EQ(refused.error().position, 4u);
}

// --- Errors -----------------------------------------------------------------

TEST(DefinitionError, FormatDrawsTheCaretUnderTheByte) {
    const auto result = parse_definition("p vfs_read %none_reg");
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(format_error(result.error()),
              "ukprobe: error: Invalid register name\n"
              "  p vfs_read %none_reg\n"
              "             ^\n");
    EXPECT_EQ(format_error(result.error(), "tool"),
              "tool: error: Invalid register name\n"
              "  p vfs_read %none_reg\n"
              "             ^\n");
}

TEST(DefinitionError, FormatAtTheEndAndWithTabs) {
    const DefinitionError error{"No argument expression", 16, "p\tvfs_read arg1="};
    EXPECT_EQ(format_error(error),
              "ukprobe: error: No argument expression\n"
              "  p vfs_read arg1=\n"
              "                  ^\n");
    const DefinitionError past{"x", 99, "ab"};
    EXPECT_EQ(format_error(past), "ukprobe: error: x\n  ab\n    ^\n");
}

TEST(DefinitionError, HugeInputsAreRefusedQuickly) {
    const auto start = std::chrono::steady_clock::now();
    const std::string parens(200000, '(');
    EXPECT_FALSE(parse_definition("p f a=%ax if " + parens + "a == 1").has_value());
    EXPECT_FALSE(parse_definition("p f +0(" + parens).has_value());
    std::string many_args = "p f";
    for (int i = 0; i < 100000; ++i) {
        many_args += " \\\"x y\"";
    }
    EXPECT_FALSE(parse_definition(many_args).has_value());
    const std::string quotes(100000, '"');
    EXPECT_FALSE(parse_definition("p f \\" + quotes).has_value());
    std::string filter = "p f a=%ax if a == 1";
    for (int i = 0; i < 100000; ++i) {
        filter += " || a == 1";
    }
    EXPECT_FALSE(parse_definition(filter).has_value());
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(DefinitionError, EmbeddedNulIsJustAByte) {
    const std::string command("p f\0x %ax", 9);
    const auto result = parse_definition(command);
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().message, "Invalid probed address or symbol");
}

}  // namespace
}  // namespace ukp::tracer
