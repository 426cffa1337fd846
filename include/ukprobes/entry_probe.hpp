// ukprobes: typed entry probes, what the kernel's jprobes were meant to be.
//
//   extern "C" int checksum(const char* data, unsigned long size);
//   ukp::EntryProbe probe{&checksum, [](const char* data, unsigned long size) { ... }};
//   if (auto registered = probe.register_probe(); !registered) ...
//
// An EntryProbe<R(Args...)> owns a ukp::Kprobe on the function's first
// instruction.  Its pre-handler rebuilds the arguments from the registers and
// stack that ukp::Regs shows there and calls the handler with them; then the
// function runs unchanged.  The handler may take (Args...) or (Regs&, Args...).
//
// The facts this file relies on (System V AMD64 psABI, section 3.2.3):
//
// 1. At a function's first instruction rsp points at the return address; the
//    stack arguments start at rsp + 8, which is 16-byte aligned (the caller
//    aligned rsp before its `call`).
// 2. Each argument is classified per eightbyte.  INTEGER eightbytes (integers
//    up to 64 bits, bool, enums, pointers, references, nullptr_t) take the
//    next of rdi, rsi, rdx, rcx, r8, r9.  An argument of two INTEGER
//    eightbytes (a 16-byte struct of integers, __int128) takes two
//    consecutive registers.  If not all of its eightbytes fit in the
//    registers left, the whole argument goes to the stack and the registers
//    stay available for later arguments.
// 3. A bool in a register has only its low 8 bits defined (0 or 1); the
//    upper 56 bits of any narrower-than-8-byte INTEGER value are undefined.
//    We read only the low sizeof(T) bytes (little endian).
// 4. Aggregates larger than 16 bytes (class MEMORY) are copied by the caller
//    into the next stack slots, aligned to max(8, alignof(T)); __int128 in
//    memory is aligned to 16 bytes.  Stack slots are 8 bytes each.
// 5. A class that is non-trivial for the purposes of calls (non-trivial copy
//    or move constructor or destructor; Itanium C++ ABI) is passed by
//    invisible reference, and such a return value, like any class return
//    larger than 16 bytes, is written through a hidden pointer that the
//    caller passes in rdi, shifting every INTEGER argument by one register.
//    The callee returns that pointer in rax.
// 6. SSE eightbytes (float, double, and any eightbyte of a small struct that
//    holds only floating-point members) travel in xmm0-7; long double (X87)
//    always goes to the stack but is 16-byte aligned x87 data.
//
// Floating point.  ukp::Regs is the kernel's pt_regs: it has no vector
// registers.  The engine keeps the probed context's saved xmm registers
// visible to handlers instead (from the signal frame on the int3 path, from
// the trampoline's save area on the optimized path; an entry trampoline
// saves xmm0-7, the argument registers), and ukp::probed_vector_register()
// reads them: a float or double argument is decoded from the low bytes of
// the next of xmm0-7, counted separately from the integer registers, and
// from the stack after the eighth.  Still rejected: long double (X87 class),
// and small structs with a floating-point member, whose eightbytes would
// have to be classified one by one (an INTEGER and an SSE eightbyte can
// share a struct); revisit with reflection.  Structs larger than 16 bytes
// are passed in memory whatever their members, so they are supported even
// when they hold doubles.

// How a small struct is classified without reflection.  A class passed by
// value in registers must be an aggregate (public members, no
// constructors).  We aggregate-initialize it, in an unevaluated context,
// from objects that convert to any integer, enum, pointer or (recursively)
// integer-only aggregate and to nothing else: the conversion to any other
// type exists but is deleted, so brace elision is never tried for a member
// of a rejected type, and the initialization is well-formed exactly when
// every member is of INTEGER class.  Arrays are covered by brace elision,
// which initializes their elements one by one.  Packed structs are caught
// by comparing each member's alignment with the struct's.  A class the
// header cannot inspect (private members, constructors, std::string_view)
// can be declared INTEGER-only by specializing ukp::passes_as_integers.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "ukprobes/ukprobes.hpp"

namespace ukp {

// Specialize to true for a trivially copyable class of at most 16 bytes and
// at most 8-byte alignment whose members are all integers, enums or pointers,
// but whose members this header cannot inspect (it is not an aggregate).
template <class T>
inline constexpr bool passes_as_integers = false;
template <class Char, class Traits>
inline constexpr bool passes_as_integers<std::basic_string_view<Char, Traits>> = true;  // pointer, size
template <class T, std::size_t Extent>
inline constexpr bool passes_as_integers<std::span<T, Extent>> = true;  // pointer[, size]

namespace detail::entry {

__extension__ typedef __int128 Int128;
__extension__ typedef unsigned __int128 UInt128;

inline constexpr std::size_t eightbyte = 8;
inline constexpr unsigned integer_argument_registers = 6;  // rdi, rsi, rdx, rcx, r8, r9
inline constexpr unsigned vector_argument_registers = 8;   // xmm0-7
inline constexpr std::size_t stack_arguments_offset = 8;    // above the return address

template <class T>
inline constexpr bool is_int128 =
    std::is_same_v<std::remove_cv_t<T>, Int128> || std::is_same_v<std::remove_cv_t<T>, UInt128>;

// One INTEGER eightbyte on its own: what a register holds in its low bytes.
template <class T>
inline constexpr bool is_integer_scalar =
    ((std::is_integral_v<T> && sizeof(T) <= eightbyte) || std::is_enum_v<T> || std::is_pointer_v<T> ||
     std::is_null_pointer_v<T>) &&
    !is_int128<T>;

// Is every member of the class T (recursively) of INTEGER class?  See the
// essay at the top for how the scan works.
template <class T>
consteval bool has_only_integer_members();

template <class U, class Outer>
consteval bool is_integer_member() {
    if constexpr (alignof(U) > alignof(Outer)) {
        return false;  // a packed struct: its misaligned members make it MEMORY
    } else if constexpr (std::is_lvalue_reference_v<U>) {
        return true;  // a reference member is a pointer
    } else if constexpr (is_integer_scalar<U> || is_int128<U>) {
        return true;
    } else if constexpr (std::is_class_v<U> && !std::is_same_v<std::remove_cv_t<U>, std::remove_cv_t<Outer>>) {
        return has_only_integer_members<std::remove_cv_t<U>>();
    } else {
        return false;
    }
}

// Converts to any member type; used to count an aggregate's initializers.
struct AnyMember {
    template <class U>
    operator U() const noexcept;  // never defined: unevaluated contexts only
};

// Converts to INTEGER-class member types only; every other conversion is
// found by overload resolution and deleted, which rules out brace elision.
template <class Outer>
struct IntegerMember {
    template <class U>
        requires(is_integer_member<U, Outer>())
    operator U() const noexcept;
    template <class U>
    operator U() const noexcept = delete;
};

template <class T, std::size_t... Index>
consteval bool initializable_from_any(std::index_sequence<Index...>) {
    return requires { T{((void)Index, AnyMember{})...}; };
}
template <class T, std::size_t... Index>
consteval bool initializable_from_integers(std::index_sequence<Index...>) {
    return requires { T{((void)Index, IntegerMember<T>{})...}; };
}

// How many initializers T's aggregate initialization takes (array elements
// count one each): one more than that fails.  A 16-byte struct of 1-bit
// bit-fields has 128 of them.
template <class T, std::size_t Count = 0>
consteval std::size_t count_initializers() {
    if constexpr (Count > 8 * 16 + 1) {
        return Count;
    } else if constexpr (!initializable_from_any<T>(std::make_index_sequence<Count + 1>{})) {
        return Count;
    } else {
        return count_initializers<T, Count + 1>();
    }
}

template <class T>
consteval bool has_only_integer_members() {
    if constexpr (passes_as_integers<T>) {
        return true;
    } else if constexpr (!std::is_aggregate_v<T> || std::is_union_v<T> || !std::is_trivially_copyable_v<T>) {
        return false;
    } else {
        constexpr auto count = count_initializers<T>();
        return initializable_from_integers<T>(std::make_index_sequence<count>{});
    }
}

// Where a value of this type travels, or why it cannot be decoded.
enum class ArgumentClass {
    Integer,  // one or two INTEGER eightbytes: registers, else the stack
    Sse,      // float or double: the next of xmm0-7, else the stack
    Memory,   // copied by the caller onto the stack
    // Not supported:
    LongDouble,
    Union,
    NotTriviallyCopyable,
    NonIntegerMember,  // floating-point, union or packed members
    OpaqueClass,
    EmptyClass,
    OverAligned,
    Unknown,
};

template <class T>
consteval ArgumentClass classify_argument() {
    using Value = std::remove_cv_t<T>;
    if constexpr (std::is_reference_v<T> || is_integer_scalar<Value> || is_int128<Value>) {
        return ArgumentClass::Integer;
    } else if constexpr (std::is_same_v<Value, long double>) {
        return ArgumentClass::LongDouble;
    } else if constexpr (std::is_same_v<Value, float> || std::is_same_v<Value, double>) {
        return ArgumentClass::Sse;
    } else if constexpr (std::is_union_v<Value>) {
        return ArgumentClass::Union;
    } else if constexpr (!std::is_class_v<Value>) {
        return ArgumentClass::Unknown;  // vector types, member pointers, _Float16, ...
    } else if constexpr (!std::is_trivially_copyable_v<Value>) {
        return ArgumentClass::NotTriviallyCopyable;
    } else if constexpr (std::is_empty_v<Value>) {
        return ArgumentClass::EmptyClass;
    } else if constexpr (sizeof(Value) > 2 * eightbyte) {
        return alignof(Value) > 2 * eightbyte ? ArgumentClass::OverAligned : ArgumentClass::Memory;
    } else if constexpr (alignof(Value) > eightbyte) {
        return ArgumentClass::OverAligned;
    } else if constexpr (has_only_integer_members<Value>()) {
        return ArgumentClass::Integer;
    } else if constexpr (std::is_aggregate_v<Value>) {
        return ArgumentClass::NonIntegerMember;
    } else {
        return ArgumentClass::OpaqueClass;
    }
}

// Instantiated once per argument type, so a failing assertion names the type
// ("In instantiation of 'struct ...::SupportedArgument<double>'").
template <class T>
struct SupportedArgument {
    static constexpr ArgumentClass argument_class = classify_argument<T>();
    static_assert(argument_class != ArgumentClass::LongDouble,
                  "ukp::EntryProbe: long double arguments (x87 class) are not supported");
    static_assert(argument_class != ArgumentClass::Union,
                  "ukp::EntryProbe: unions passed by value are not supported; pass a pointer");
    static_assert(argument_class != ArgumentClass::NotTriviallyCopyable,
                  "ukp::EntryProbe: a class that is not trivially copyable is passed by invisible reference; "
                  "not supported, take it by reference or pointer instead");
    static_assert(argument_class != ArgumentClass::NonIntegerMember,
                  "ukp::EntryProbe: a struct of at most 16 bytes passed by value must have only naturally aligned "
                  "integer, enum or pointer members; floating-point members travel in the vector registers, which "
                  "pt_regs does not carry; not supported yet");
    static_assert(argument_class != ArgumentClass::OpaqueClass,
                  "ukp::EntryProbe: a class of at most 16 bytes passed by value must be an aggregate of public "
                  "integer, enum or pointer members (or specialize ukp::passes_as_integers for it)");
    static_assert(argument_class != ArgumentClass::EmptyClass,
                  "ukp::EntryProbe: empty classes passed by value are not supported");
    static_assert(argument_class != ArgumentClass::OverAligned,
                  "ukp::EntryProbe: over-aligned classes passed by value are not supported");
    static_assert(argument_class != ArgumentClass::Unknown,
                  "ukp::EntryProbe: this argument type has no supported System V mapping");
    static constexpr bool value = true;
};

// Is a class return value written through a hidden pointer passed in rdi?
// (fact 5).  "Non-trivial for the purposes of calls" is approximated with
// the type traits: a trivial destructor, and each copy or move constructor
// trivial or deleted, with at least one of them usable.
template <class R>
consteval bool returns_through_hidden_pointer() {
    if constexpr (!std::is_class_v<R> && !std::is_union_v<R>) {
        return false;
    } else {
        constexpr bool copy_is_trivial = std::is_trivially_copy_constructible_v<R> || !std::is_copy_constructible_v<R>;
        constexpr bool move_is_trivial = std::is_trivially_move_constructible_v<R> || !std::is_move_constructible_v<R>;
        constexpr bool trivial_for_calls = std::is_trivially_destructible_v<R> && copy_is_trivial &&
                                           move_is_trivial &&
                                           (std::is_copy_constructible_v<R> || std::is_move_constructible_v<R>);
        return !trivial_for_calls || sizeof(R) > 2 * eightbyte;
    }
}

struct ArgumentShape {
    ArgumentClass argument_class;
    std::size_t size;
    std::size_t alignment;
};

template <class T>
consteval ArgumentShape shape_of() {
    if constexpr (std::is_reference_v<T>)
        return {ArgumentClass::Integer, sizeof(void*), alignof(void*)};
    else
        return {classify_argument<T>(), sizeof(T), alignof(T)};
}

// Where one argument is at the function's first instruction.
struct ArgumentLocation {
    bool in_registers = false;
    unsigned first_register = 0;       // index into rdi, rsi, rdx, rcx, r8, r9
    std::size_t stack_offset = 0;      // from the stack pointer, when on the stack
    bool in_vector_register = false;
    unsigned vector_register = 0;      // index into xmm0-7
};

// Fact 2 and 4 as a walk over the parameter list.
template <class R, class... Args>
consteval std::array<ArgumentLocation, sizeof...(Args)> locate_arguments() {
    const std::array<ArgumentShape, sizeof...(Args)> shapes{shape_of<Args>()...};
    std::array<ArgumentLocation, sizeof...(Args)> locations{};
    unsigned next_register = returns_through_hidden_pointer<R>() ? 1 : 0;
    unsigned next_vector_register = 0;  // SSE arguments count separately
    std::size_t stack_area = 0;  // offset in the stack argument area
    for (std::size_t index = 0; index < shapes.size(); ++index) {
        const auto& shape = shapes[index];
        const auto eightbytes = static_cast<unsigned>((shape.size + eightbyte - 1) / eightbyte);
        if (shape.argument_class == ArgumentClass::Sse && next_vector_register < vector_argument_registers) {
            locations[index] = {.in_registers = false,
                                .first_register = 0,
                                .stack_offset = 0,
                                .in_vector_register = true,
                                .vector_register = next_vector_register++};
        } else if (shape.argument_class == ArgumentClass::Integer &&
            next_register + eightbytes <= integer_argument_registers) {
            locations[index] = {.in_registers = true, .first_register = next_register, .stack_offset = 0,
                                .in_vector_register = false, .vector_register = 0};
            next_register += eightbytes;
        } else {
            const auto alignment = std::max(eightbyte, shape.alignment);
            stack_area = (stack_area + alignment - 1) / alignment * alignment;
            locations[index] = {.in_registers = false,
                                .first_register = 0,
                                .stack_offset = stack_arguments_offset + stack_area,
                                .in_vector_register = false,
                                .vector_register = 0};
            stack_area += eightbytes * eightbyte;
        }
    }
    return locations;
}

inline std::uint64_t integer_register(const Regs& regs, unsigned index) noexcept {
    switch (index) {
    case 0: return regs.di;
    case 1: return regs.si;
    case 2: return regs.dx;
    case 3: return regs.cx;
    case 4: return regs.r8;
    case 5: return regs.r9;
    default: return 0;
    }
}

// A value from the low sizeof(T) bytes of up to two eightbytes (fact 3).
template <class T>
T value_from_words(std::uint64_t low, std::uint64_t high) noexcept {
    using Value = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<Value, bool>) {
        return static_cast<std::uint8_t>(low) != 0;
    } else {
        const std::uint64_t words[2] = {low, high};
        std::array<unsigned char, sizeof(Value)> bytes;
        std::memcpy(bytes.data(), words, sizeof(Value));
        return std::bit_cast<Value>(bytes);
    }
}

template <class T>
T value_from_memory(std::uint64_t address) noexcept {
    using Value = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<Value, bool>) {
        return *reinterpret_cast<const std::uint8_t*>(address) != 0;
    } else {
        std::array<unsigned char, sizeof(Value)> bytes;
        std::memcpy(bytes.data(), reinterpret_cast<const void*>(address), sizeof(Value));
        return std::bit_cast<Value>(bytes);
    }
}

template <class T, ArgumentLocation where>
T decode_argument(const Regs& regs) noexcept {
    const auto stack_address = regs.sp + where.stack_offset;
    if constexpr (std::is_reference_v<T>) {
        const auto address = where.in_registers ? integer_register(regs, where.first_register)
                                                : *reinterpret_cast<const std::uint64_t*>(stack_address);
        return static_cast<T>(*reinterpret_cast<std::remove_reference_t<T>*>(address));
    } else if constexpr (where.in_vector_register) {
        // The probed context's xmm register, as the trap or trampoline saved
        // it (ukp::probed_vector_register); the value is in its low bytes.
        unsigned char vector[16] = {};
        (void)probed_vector_register(where.vector_register, vector);
        std::array<unsigned char, sizeof(T)> bytes;
        std::memcpy(bytes.data(), vector, sizeof(T));
        return std::bit_cast<std::remove_cv_t<T>>(bytes);
    } else if constexpr (where.in_registers) {
        const auto high = sizeof(T) > eightbyte ? integer_register(regs, where.first_register + 1) : 0;
        return value_from_words<T>(integer_register(regs, where.first_register), high);
    } else {
        return value_from_memory<T>(stack_address);
    }
}

template <class>
inline constexpr bool dependent_false = false;

}  // namespace detail::entry

template <class Signature>
class EntryProbe;

// A variadic function's unnamed arguments have no type to decode with.
template <class R, class... Args>
class EntryProbe<R(Args..., ...)> {
    static_assert(detail::entry::dependent_false<R>,
                  "ukp::EntryProbe: variadic functions are not supported; probe them with a ukp::Kprobe");
};

template <class R, class... Args>
class EntryProbe<R(Args...)> {
    static_assert((detail::entry::SupportedArgument<Args>::value && ...));
    static constexpr auto locations = detail::entry::locate_arguments<R, Args...>();

public:
    using Function = R (*)(Args...);
    using Handler = std::function<void(Regs&, Args...)>;

    // Probe `function`; `handler` takes (Args...) or (Regs&, Args...).
    template <class Callable>
    EntryProbe(Function function, Callable handler)
        : handler_(wrap(std::move(handler))),
          probe_{.addr = reinterpret_cast<void*>(function), .pre_handler = pre_handler()} {}

    // Probe the function named "name" or "module:name"; the signature must be
    // spelled out: EntryProbe<int(int, const char*)>{"libfoo.so:bar", handler}.
    template <class Callable>
    EntryProbe(std::string symbol_name, Callable handler)
        : handler_(wrap(std::move(handler))),
          probe_{.symbol_name = std::move(symbol_name), .pre_handler = pre_handler()} {}

    EntryProbe(const EntryProbe&) = delete;
    EntryProbe& operator=(const EntryProbe&) = delete;

    [[nodiscard]] Result<void> register_probe() { return register_kprobe(probe_); }
    // Errc::NotRegistered when it is not registered.
    Result<void> unregister_probe() {
        if (!probe_.is_registered())
            return make_error(Errc::NotRegistered, "entry probe on '" + describe_target() + "' is not registered");
        unregister_kprobe(probe_);
        return {};
    }

    [[nodiscard]] std::uint64_t nhit() const noexcept { return probe_.nhit(); }
    [[nodiscard]] std::uint64_t nmissed() const noexcept { return probe_.nmissed(); }
    [[nodiscard]] bool is_registered() const noexcept { return probe_.is_registered(); }
    // The underlying probe: set flags (flag_no_optimize, flag_disabled)
    // before registering, enable/disable it, read its address.  Do not
    // replace its pre_handler.
    [[nodiscard]] Kprobe& kprobe() noexcept { return probe_; }
    [[nodiscard]] const Kprobe& kprobe() const noexcept { return probe_; }

private:
    template <class Callable>
    static Handler wrap(Callable handler) {
        if constexpr (std::is_invocable_v<Callable&, Args...>) {
            static_assert(std::is_void_v<std::invoke_result_t<Callable&, Args...>>,
                          "ukp::EntryProbe: the handler returns void; to change arguments or skip the function, "
                          "use a ukp::Kprobe");
            return [callable = std::move(handler)](Regs&, Args... arguments) mutable {
                std::invoke(callable, std::forward<Args>(arguments)...);
            };
        } else if constexpr (std::is_invocable_v<Callable&, Regs&, Args...>) {
            static_assert(std::is_void_v<std::invoke_result_t<Callable&, Regs&, Args...>>,
                          "ukp::EntryProbe: the handler returns void; to change arguments or skip the function, "
                          "use a ukp::Kprobe");
            return Handler(std::move(handler));
        } else {
            static_assert(detail::entry::dependent_false<Callable>,
                          "ukp::EntryProbe: the handler must be callable with the function's parameters, "
                          "optionally preceded by ukp::Regs&");
            return {};
        }
    }

    PreHandler pre_handler() {
        return [this](Kprobe&, Regs& regs) {
            [&]<std::size_t... Index>(std::index_sequence<Index...>) {
                handler_(regs, detail::entry::decode_argument<Args, locations[Index]>(regs)...);
            }(std::index_sequence_for<Args...>{});
            return 0;  // run the function as it is
        };
    }

    std::string describe_target() const {
        if (!probe_.symbol_name.empty()) return probe_.symbol_name;
        char text[2 + 16 + 1];
        const auto length = std::snprintf(text, sizeof text, "%#lx", reinterpret_cast<unsigned long>(probe_.addr));
        return std::string(text, static_cast<std::size_t>(length));
    }

    // Declared before probe_ so that it outlives it: a registered probe_
    // unregisters itself when destroyed, after its last handler call ends.
    Handler handler_;
    Kprobe probe_;
};

template <class R, class... Args, class Callable>
EntryProbe(R (*)(Args...), Callable) -> EntryProbe<R(Args...)>;
template <class R, class... Args, class Callable>
EntryProbe(R (*)(Args...) noexcept, Callable) -> EntryProbe<R(Args...)>;

// The value a function returns, typed, read where it returns (a return
// handler, or a post-handler on the `ret`): integers, enums, pointers and
// references from rax; __int128 and 16-byte integer-only aggregates from
// rax:rdx; classes returned through the hidden pointer from the memory rax
// points at (the callee returns that pointer in rax).
template <class R>
R typed_return_value(const Regs& regs) noexcept {
    using namespace detail::entry;
    using Value = std::remove_cv_t<std::remove_reference_t<R>>;
    if constexpr (std::is_reference_v<R>) {
        return static_cast<R>(*reinterpret_cast<std::remove_reference_t<R>*>(regs.ax));
    } else if constexpr (is_integer_scalar<Value> || is_int128<Value>) {
        return value_from_words<R>(regs.ax, regs.dx);
    } else if constexpr (std::is_void_v<Value>) {
        static_assert(dependent_false<R>, "ukp::typed_return_value: a void function returns no value");
    } else if constexpr (std::is_floating_point_v<Value>) {
        static_assert(dependent_false<R>,
                      "ukp::typed_return_value: floating-point results are in xmm0 or st0, which pt_regs does not "
                      "carry; not supported yet");
    } else if constexpr (std::is_class_v<Value> && std::is_trivially_copyable_v<Value> &&
                         returns_through_hidden_pointer<Value>()) {
        return value_from_memory<R>(regs.ax);
    } else if constexpr (std::is_class_v<Value> && std::is_trivially_copyable_v<Value> &&
                         classify_argument<Value>() == ArgumentClass::Integer) {
        return value_from_words<R>(regs.ax, regs.dx);
    } else {
        static_assert(dependent_false<R>,
                      "ukp::typed_return_value: this return type has no supported System V mapping (floating-point "
                      "members, unions and non-trivially-copyable classes are not supported)");
    }
}

}  // namespace ukp
