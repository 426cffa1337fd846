// The trampoline bodies and stubs of optimized probes (see trampoline.hpp).
//
// Body frame, from the probed code's stack pointer S downwards:
//   [S-128, S)          the red zone: never touched
//   S-136               the stub's return address R (points at the stub's
//                       ProbePoint* word); later the continuation address
//   [S-136-GAP, S-136)  room for a pre-handler that lowers regs.sp
//   S-144-GAP           the flags, pushed first (nothing before changes them)
//   below               struct pt_regs; a second copy of its general
//                       registers (the backup a faulting handler's changes
//                       are undone from, with the flags above and sp =
//                       S: written here while the values are in registers,
//                       it costs less than a copy in C++);
//                       arch::OptimizedHitFrame; the
//                       64-byte aligned vector area
//
// A handler call the dispatcher makes through the frame (its common case)
// that faults resumes at the body's label 70 with rsp = the frame: the body
// finds its own registers again (rbx from rsp, r12 from the frame), lets
// ukp_optimized_abandoned() finish the hit, and leaves as usual.
//
// Exit, the same for every outcome: the C++ side returns the continuation
// C.  With T = regs.sp - 136 the body stores C at [T], restores every
// register from pt_regs, loads rsp = T and executes `ret 128`: rip = C,
// rsp = T + 8 + 128 = regs.sp.  [T] lies below the red zone of the stack the
// program resumes with, so a signal arriving between `mov rsp` and `ret`
// (its frame goes below T - 128) cannot overwrite it; and it lies above our
// own frame as long as the handler lowered regs.sp by less than GAP - 8,
// which the C++ side enforces.
#include "arch/x86_64/trampoline.hpp"

#include <cpuid.h>

#include <array>
#include <cstddef>
#include <cstring>
#include <fmt/format.h>

#include "arch/backend.hpp"
#include "arch/x86_64/asm_pt_regs.hpp"
#include "arch/x86_64/relocator.hpp"

namespace ukp::x86 {

namespace {

constexpr std::size_t gap = handler_stack_allowance + 16;  // 1024
static_assert(gap % 16 == 0);
static_assert(body_sp_above_flags == 8 + gap + 8 + 128);
constexpr std::size_t vector_area = 64 * 16 + 64 * 16 + 64 + 64;  // zmm0-15, zmm16-31, k0-7, mxcsr
static_assert(vector_area % 64 == 0);

// Stub layout (offsets in bytes).  Each call into a body is
//   .quad ProbePoint*; lea rsp, [rsp-0x80]; call qword ptr [rip+body]
// so the body finds the point at its return address minus 19, and returns
// to exactly the address its call pushed: a balanced call/ret, which the
// return predictor gets right (returning past a data word after the call
// cost ~20 ns a hit in mispredictions).
constexpr std::size_t stub_lea_length = 5;      // 48 8d 64 24 80
constexpr std::size_t stub_call_length = 6;     // ff 15 disp32
static_assert(stub_call_sequence == stub_data_length + stub_lea_length + stub_call_length);
constexpr std::size_t jump_over_data_length = 2;  // eb 08
constexpr std::size_t body_pointer_bytes = 16;  // pre body, post body at the slot's end

}  // namespace

// The bodies.  The asm lives in a function that is never called: only its
// operands matter (offsetof values), and .pushsection puts the code in
// .text under its own global labels.
__attribute__((used)) static void define_trampoline_bodies() {
    // An asm statement takes at most 30 operands: the frame's layout comes
    // as assembler symbols, set first.
    asm volatile(
        ".set ukp_frame_size, %c[frame_size]\n"
        ".set ukp_frame_resume, %c[frame_resume]\n"
        ".set ukp_frame_body_state, %c[frame_body_state]\n"
        ".set ukp_frame_continuation, %c[frame_continuation]\n" ::[frame_size] "i"(sizeof(arch::OptimizedHitFrame)),
        [frame_resume] "i"(offsetof(arch::OptimizedHitFrame, resume)),
        [frame_body_state] "i"(offsetof(arch::OptimizedHitFrame, body_state)),
        [frame_continuation] "i"(offsetof(arch::OptimizedHitFrame, continuation)));
    asm volatile(
        ".pushsection .text\n"
        ".intel_syntax noprefix\n"
        UKP_ASM_GPR_MACROS
        UKP_ASM_VECTOR_MACROS
        UKP_ASM_FLAGS_MACRO
        UKP_ASM_CONSTANT_FIELDS_MACRO
        R"(

        # UKP_BODY name, last_low_vector (7 at entry, 15 elsewhere),
        #          wide (1: also opmask and zmm16-31), mxcsr (1: preserve MXCSR),
        #          c_function
        .macro UKP_BODY name, last, wide, mxcsr, function
        .globl \name
        .hidden \name
        .type \name, @function
        .p2align 4
\name:
        lea rsp, [rsp - %c[gap]]
        pushfq
        lea rsp, [rsp - %c[regs_size]]
        UKP_SAVE_GPRS
        UKP_SAVE_GPRS -%c[regs_size]
        mov rbx, rsp
        mov rax, [rbx + %c[regs_size]]
        mov [rbx + %c[flags]], rax
        lea rax, [rbx + %c[regs_size] + 8 + %c[gap] + 8 + 128]
        mov [rbx + %c[sp]], rax
        # The fields a trampoline cannot know, as the int3 path has them
        # (the dispatcher sets ip).  The backup gets only the general
        # registers: flags and sp are in this frame already (the pushed
        # word, and its address), orig_ax, cs and ss no undo needs.  The
        # paths that need a whole backup complete it: the dispatcher's
        # general path (its later handlers see an undone pt_regs whole),
        # the resume below, arch::complete_optimized_backup.
        UKP_FILL_CONSTANT_FIELDS 0
        # The C ABI wants DF clear, and a program single-stepping itself
        # must not step through the dispatcher and handlers: clear both for
        # the call (the exit takes its popfq path then and restores them).
        # Only when one is set: even cld costs ~1.5 ns.
        test byte ptr [rbx + %c[flags] + 1], 5   # TF (bit 8), DF (bit 10)
        jz 10f
        pushfq
        and qword ptr [rsp], -0x501
        popfq
10:
        lea rsp, [rbx - %c[regs_size] - ukp_frame_size]
        lea rax, [rip + 70f]
        mov [rsp + ukp_frame_resume], rax
        mov r9, [rbx + %c[regs_size] + 8 + %c[gap]]   # the stub's return address R: the continuation
        mov [rsp + ukp_frame_continuation], r9
        mov ecx, 1
        xgetbv
        mov r12d, eax
        mov [rsp + ukp_frame_body_state], r12
        and rsp, -64
        sub rsp, %c[vector_area]

        UKP_SAVE_LOW_VECTORS \last
        .if \wide
        test r12d, 0x20
        jz 3f
        .irp i, 0,1,2,3,4,5,6,7
        kmovq [rsp + 2048 + 8*\i], k\i
        .endr
3:      test r12d, 0x80
        jz 4f
        .irp i, 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        vmovdqu64 [rsp + 1024 + 64*(\i-16)], zmm\i
        .endr
4:
        .endif
        .if \mxcsr
        stmxcsr [rsp + 2112]
        .endif

        mov rdi, rbx
        mov rsi, rsp                    # the saved vector registers
        mov edx, \last + 1
        lea rcx, [rbx - %c[regs_size]]  # the backup
        mov r8, [r9 - %c[call_sequence]]              # the stub's data word: the ProbePoint
        call \function
71:

        .if \mxcsr
        # ldmxcsr is slow: only when a handler changed MXCSR.
        stmxcsr [rsp + 2116]
        mov ecx, [rsp + 2112]
        cmp ecx, [rsp + 2116]
        je 11f
        ldmxcsr [rsp + 2112]
11:
        .endif
        .if \wide
        test r12d, 0x80
        jz 5f
        .irp i, 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        vmovdqu64 zmm\i, [rsp + 1024 + 64*(\i-16)]
        .endr
5:      test r12d, 0x20
        jz 6f
        .irp i, 0,1,2,3,4,5,6,7
        kmovq k\i, [rsp + 2048 + 8*\i]
        .endr
6:
        .endif
        UKP_RESTORE_LOW_VECTORS \last
        # Continue at rax with rsp = regs.sp (see the essay above).
        mov rcx, [rbx + %c[sp]]
        sub rcx, 136
        mov [rcx], rax
        mov [rbx + %c[orig_ax]], rcx
        mov rsp, rbx
        UKP_RESTORE_FLAGS %c[regs_size]
        UKP_RESTORE_GPRS
        mov rsp, [rsp + %c[orig_ax]]
        ret 128

70:     # A handler call abandoned (see above): rsp = the frame.
        cld
        lea rbx, [rsp + ukp_frame_size + %c[regs_size]]
        mov rax, [rbx + %c[regs_size]]
        mov [rbx - %c[regs_size] + %c[flags]], rax
        lea rax, [rbx + %c[regs_size] + 8 + %c[gap] + 8 + 128]
        mov [rbx - %c[regs_size] + %c[sp]], rax
        mov r12, [rsp + ukp_frame_body_state]
        mov rdx, [rsp + ukp_frame_continuation]
        and rsp, -64
        sub rsp, %c[vector_area]
        mov rdi, rbx
        lea rsi, [rbx - %c[regs_size]]
        mov rcx, [rdx - %c[call_sequence]]
        call ukp_optimized_abandoned
        jmp 71b
        .size \name, .-\name
        .endm

        .globl ukp_trampoline_bodies_start
        .hidden ukp_trampoline_bodies_start
        .p2align 6
ukp_trampoline_bodies_start:
        UKP_BODY ukp_trampoline_body_entry, 7, 0, 0, ukp_optimized_pre_hit
        UKP_BODY ukp_trampoline_body_middle, 15, 1, 1, ukp_optimized_pre_hit
        UKP_BODY ukp_trampoline_body_middle_narrow, 15, 0, 1, ukp_optimized_pre_hit
        UKP_BODY ukp_trampoline_body_post, 15, 1, 1, ukp_optimized_post_hit
        UKP_BODY ukp_trampoline_body_post_narrow, 15, 0, 1, ukp_optimized_post_hit
        # A return probe's entry (stub_tag_return_call) has its own C++
        # side: one call fewer on every watched call.
        UKP_BODY ukp_trampoline_body_entry_return, 7, 0, 0, ukp_optimized_return_call_hit
        UKP_BODY ukp_trampoline_body_middle_return, 15, 1, 1, ukp_optimized_return_call_hit
        UKP_BODY ukp_trampoline_body_middle_narrow_return, 15, 0, 1, ukp_optimized_return_call_hit
        .globl ukp_trampoline_bodies_end
        .hidden ukp_trampoline_bodies_end
ukp_trampoline_bodies_end:
        .purgem UKP_BODY
        )" UKP_ASM_PURGE_GPR_MACROS UKP_ASM_PURGE_VECTOR_MACROS UKP_ASM_PURGE_FLAGS_MACRO
        UKP_ASM_PURGE_CONSTANT_FIELDS_MACRO
        ".att_syntax prefix\n"
        ".popsection\n" ::UKP_PT_REGS_OPERANDS, UKP_FLAGS_OPERANDS, [gap] "i"(gap), [vector_area] "i"(vector_area),
        [call_sequence] "i"(stub_call_sequence), [user_cs] "i"(user_cs), [user_ss] "i"(user_ss));
}

extern "C" char ukp_trampoline_bodies_start[], ukp_trampoline_bodies_end[];
extern "C" char ukp_trampoline_body_entry[], ukp_trampoline_body_middle[], ukp_trampoline_body_middle_narrow[],
    ukp_trampoline_body_post[], ukp_trampoline_body_post_narrow[], ukp_trampoline_body_entry_return[],
    ukp_trampoline_body_middle_return[], ukp_trampoline_body_middle_narrow_return[];

bool is_in_trampoline_body(std::uint64_t pc) noexcept {
    return pc >= reinterpret_cast<std::uint64_t>(ukp_trampoline_bodies_start) &&
           pc < reinterpret_cast<std::uint64_t>(ukp_trampoline_bodies_end);
}

bool cpu_supports_trampolines() noexcept {
    // The bodies read XINUSE with xgetbv(ecx=1): CPUID.(0DH,1):EAX bit 2,
    // and xgetbv itself needs OSXSAVE (CPUID.1:ECX bit 27).
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return false;
    if (__get_cpuid_max(0, nullptr) < 0xd) return false;
    __cpuid_count(0xd, 1, eax, ebx, ecx, edx);
    return (eax & (1u << 2)) != 0;
}

namespace {

void put_u32(std::span<std::uint8_t> out, std::size_t at, std::uint32_t value) {
    std::memcpy(out.data() + at, &value, sizeof value);
}
void put_u64(std::span<std::uint8_t> out, std::size_t at, std::uint64_t value) {
    std::memcpy(out.data() + at, &value, sizeof value);
}

// .quad point; lea rsp, [rsp-0x80]; call qword ptr [rip+disp32]
void emit_body_call(std::span<std::uint8_t> out, std::size_t at, std::size_t pointer_offset, const void* point) {
    put_u64(out, at, reinterpret_cast<std::uint64_t>(point));
    const std::uint8_t lea_rsp_minus_128[] = {0x48, 0x8d, 0x64, 0x24, 0x80};  // lea rsp, [rsp-0x80]
    std::memcpy(out.data() + at + stub_data_length, lea_rsp_minus_128, sizeof lea_rsp_minus_128);
    std::size_t call = at + stub_data_length + stub_lea_length;
    out[call] = 0xff;  // call qword ptr [rip+disp32]
    out[call + 1] = 0x15;
    auto next = static_cast<std::int64_t>(call + stub_call_length);
    put_u32(out, call + 2, static_cast<std::uint32_t>(static_cast<std::int64_t>(pointer_offset) - next));
}

}  // namespace


Result<std::size_t> build_stub(const DisplacedRegion& region, std::uint64_t stub_address, const void* point,
                               BodyKind pre_body, bool post_after_first, bool narrow, std::uintptr_t data_tag,
                               std::span<std::uint8_t> out, StubLayout* layout) {
    if (out.size() < stub_call_sequence * 2 + body_pointer_bytes + jmp_rel32_length)
        return make_error(Errc::InvalidArgument, "trampoline stub buffer too small");
    std::memset(out.data(), 0xcc, out.size());  // int3 padding
    const std::size_t pre_pointer = out.size() - 8, post_pointer = out.size() - 16;
    void* pre = nullptr;
    if (data_tag & stub_tag_return_call)
        pre = pre_body == BodyKind::Entry ? static_cast<void*>(ukp_trampoline_body_entry_return)
              : narrow                    ? static_cast<void*>(ukp_trampoline_body_middle_narrow_return)
                                          : static_cast<void*>(ukp_trampoline_body_middle_return);
    else
        pre = pre_body == BodyKind::Entry ? static_cast<void*>(ukp_trampoline_body_entry)
              : narrow                    ? static_cast<void*>(ukp_trampoline_body_middle_narrow)
                                          : static_cast<void*>(ukp_trampoline_body_middle);
    void* post = narrow ? static_cast<void*>(ukp_trampoline_body_post_narrow)
                        : static_cast<void*>(ukp_trampoline_body_post);
    put_u64(out, pre_pointer, reinterpret_cast<std::uint64_t>(pre));
    put_u64(out, post_pointer, reinterpret_cast<std::uint64_t>(post));

    emit_body_call(out, 0, pre_pointer,
                   reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(point) | data_tag));
    std::size_t at = stub_call_sequence;
    if (data_tag & stub_tag_return_call) {
        const std::uint8_t jmp_rsp_minus_8[] = {0xff, 0x64, 0x24, 0xf8};  // jmp qword ptr [rsp-8]
        static_assert(sizeof jmp_rsp_minus_8 == stub_return_call_jump_length);
        std::memcpy(out.data() + at, jmp_rsp_minus_8, sizeof jmp_rsp_minus_8);
        at += sizeof jmp_rsp_minus_8;
    }
    const std::size_t limit = out.size() - body_pointer_bytes;
    if (layout) *layout = StubLayout{.stub = stub_address};
    // jmp +8 over the data word, then the post-handler's call sequence.
    auto emit_post_call = [&]() -> Result<void> {
        if (at + jump_over_data_length + stub_call_sequence + jmp_rel32_length > limit)
            return make_error(Errc::InvalidArgument, "the post-handler call does not fit the trampoline");
        out[at] = 0xeb;  // jmp rel8 +8
        out[at + 1] = stub_data_length;
        emit_body_call(out, at + jump_over_data_length, post_pointer, point);
        at += jump_over_data_length + stub_call_sequence;
        return {};
    };
    std::array<std::uint8_t, max_relocated_length> copy{};
    for (std::size_t i = 0; i < region.insns.size(); ++i) {
        if (i == 1 && post_after_first)
            if (auto emitted = emit_post_call(); !emitted) return std::unexpected(emitted.error());
        auto written = relocate(region.insns[i], stub_address + at, copy);
        if (!written) return std::unexpected(written.error());
        if (at + *written + jmp_rel32_length > limit)
            return make_error(Errc::InvalidArgument,
                              fmt::format("the relocated region at {:#x} does not fit a {}-byte trampoline",
                                          region.start, out.size()));
        std::memcpy(out.data() + at, copy.data(), *written);
        if (layout && i < std::size(layout->original)) {
            layout->copy_offset[i] = static_cast<std::uint8_t>(at);
            layout->copy_length[i] = static_cast<std::uint8_t>(*written);
            layout->original[i] = region.insns[i].address;
            layout->original_length[i] = region.insns[i].length;
            layout->count = static_cast<std::uint8_t>(i + 1);
        }
        at += *written;
    }
    if (post_after_first && region.insns.size() == 1)
        if (auto emitted = emit_post_call(); !emitted) return std::unexpected(emitted.error());
    auto jump = emit_jmp_rel32(stub_address + at, region.start + region.length, out.subspan(at));
    if (!jump) return std::unexpected(jump.error());
    return at + *jump;
}

Result<std::array<std::uint8_t, optimized_jump_length>> jump_to_stub(std::uint64_t probe_address,
                                                                     std::uint64_t stub_address) {
    std::array<std::uint8_t, optimized_jump_length> bytes{};
    auto written = emit_jmp_rel32(probe_address, stub_entry(stub_address), bytes);
    if (!written) return std::unexpected(written.error());
    return bytes;
}

}  // namespace ukp::x86
