// The return trampoline of return probes (core/kretprobe.hpp).
//
// Facts it relies on (System V x86-64 psABI):
// - At a function's first instruction, [rsp] is the return address; the
//   entry probe overwrites that word with ukp_return_trampoline, so the
//   function's `ret` arrives here with rsp = slot + 8 and every register as
//   the function left it: rax/rdx, xmm0/xmm1 (ymm0/zmm0 for vector types),
//   st0/st1 (long double) may hold the return value.
// - Nothing below rsp is live: the function has returned, and a caller
//   that made a call keeps nothing in its red zone across it.
// - Caller-saved registers are NOT dead: GCC's interprocedural register
//   allocation (-fipa-ra) lets a caller keep values in registers a callee of
//   the same unit is known not to clobber.  So every GPR, the flags and
//   xmm0-15 (with their ymm/zmm upper halves when in use, read from XINUSE
//   like the optimized bodies do) come back exactly as they were.  The
//   narrow variants keep only what a caller relying on the ABI can see:
//   xmm0-1 (the return values) of the vector registers, rax, rdx and the
//   callee-saved registers of the general ones, and of the flags only DF,
//   TF and the system ones (the handlers see everything; changes to the
//   rest are not carried out).  They are used when
//   no code of the module calls or jumps to the function directly (the
//   optimized entry knows, plan_optimization), so every caller relies on
//   the ABI alone.
// - When XINUSE said every upper half was zero (the common case), the
//   restore ends with vzeroupper: a handler that left them in use (hand-
//   written AVX code) would otherwise leave the program paying for a dirty
//   upper state.  Saving ymm0-1 without XINUSE was tried: on an AVX-512
//   machine, finding out whether zmm0-1's upper halves are in use takes a
//   512-bit instruction, and one on every return doubled the cost of a
//   latency probe (whose handlers read the clock) through the core's
//   AVX-512 transitions.
// - Four variants: full or narrow, and leaving with jmp or, when the
//   function was entered by its landing's call (see the landings below),
//   with ret.
//   zmm16-31 and k0-7 are not saved: our own code never touches them; a
//   handler compiled for AVX-512 that uses them would clobber them.
//   Revisit if that becomes a real case.
// - The x87 stack must be empty at a call: when TOP != 0 (a long double
//   is being returned) the stack is saved and emptied with fnsave, and put
//   back with frstor.  That path is rare and slow; the common one costs one
//   fnstsw.
//
// Frame, from the slot S (where the return address was) downwards:
//   S          the real return address, written before the exit
//   S-8        the flags (pushfq)
//   below      struct pt_regs; a second copy of its general registers
//              (the backup a faulting handler's changes are undone from,
//              with the flags above and sp = S + 8); arch::ReturnHitFrame;
//              the 64-byte aligned
//              vector area
// A return-handler call made through the frame (the common case of
// ukp_return_probe_hit) that faults resumes at label 70 with rsp = the
// frame: the trampoline finds rbx from rsp and r12d, r13d in the frame, lets
// ukp_return_abandoned() finish the return, and leaves as usual.
// Exit: restore everything from pt_regs, rsp = S + 8, `jmp [S]`: rip = the
// real return address, rsp = S + 8, exactly what the caller expects.  A
// signal arriving before the jump builds its frame below S + 8 - 128: [S]
// is safe.
#include <cpuid.h>
#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "arch/x86_64/asm_pt_regs.hpp"
#include "arch/x86_64/trampoline.hpp"
#include "arch/backend.hpp"

extern "C" {
// 1 when xgetbv(ecx=1) may be used (XINUSE), set by prepare_return_trampoline.
__attribute__((visibility("hidden"), used)) std::uint32_t ukp_return_trampoline_xinuse = 0;
// 1 when the CPU and OS give AVX (vzeroupper may be used), set by
// prepare_return_trampoline.
__attribute__((visibility("hidden"), used)) std::uint32_t ukp_return_trampoline_has_avx = 0;
// core/kretprobe.cpp: runs the return handlers (`backup`: a second copy of
// the general registers), returns the real address.
std::uint64_t ukp_return_probe_hit(pt_regs* regs, pt_regs* backup);
// The same after that call's return handler faulted and was abandoned.
std::uint64_t ukp_return_abandoned(pt_regs* regs, pt_regs* backup);
extern char ukp_return_trampoline[], ukp_return_trampoline_by_ret[], ukp_return_trampoline_narrow[],
    ukp_return_trampoline_narrow_by_ret[], ukp_return_trampolines_start[], ukp_return_trampolines_end[];
}

namespace ukp::x86 {

namespace {
constexpr std::size_t vector_area = 64 * 16 + 128;  // zmm0-15, then the fnsave image (108 bytes)
constexpr std::size_t fnsave_offset = 64 * 16;
static_assert(vector_area % 64 == 0);
}  // namespace

__attribute__((used)) static void define_return_trampoline() {
    // An asm statement takes at most 30 operands: the frame's layout comes
    // as assembler symbols, set first.
    asm volatile(".set ukp_return_frame_size, %c[size]\n"
                 ".set ukp_return_frame_resume, %c[resume]\n"
                 ".set ukp_return_frame_state, %c[state]\n" ::[size] "i"(sizeof(arch::ReturnHitFrame)),
                 [resume] "i"(offsetof(arch::ReturnHitFrame, resume)),
                 [state] "i"(offsetof(arch::ReturnHitFrame, body_state)));
    // pt_regs offsets by register name, for the narrow variants' partial
    // backup.
    asm volatile(".set ukp_return_offset_rax, %c[ax]\n"
                 ".set ukp_return_offset_rdx, %c[dx]\n"
                 ".set ukp_return_offset_rbx, %c[bx]\n"
                 ".set ukp_return_offset_rbp, %c[bp]\n"
                 ".set ukp_return_offset_r12, %c[r12]\n"
                 ".set ukp_return_offset_r13, %c[r13]\n"
                 ".set ukp_return_offset_r14, %c[r14]\n"
                 ".set ukp_return_offset_r15, %c[r15]\n"
                 ".set ukp_return_offset_rcx, %c[cx]\n"
                 ".set ukp_return_offset_rsi, %c[si]\n"
                 ".set ukp_return_offset_rdi, %c[di]\n"
                 ".set ukp_return_offset_r8, %c[r8]\n"
                 ".set ukp_return_offset_r9, %c[r9]\n"
                 ".set ukp_return_offset_r10, %c[r10]\n"
                 ".set ukp_return_offset_r11, %c[r11]\n" ::UKP_PT_REGS_OPERANDS);
    asm volatile(
        ".pushsection .text\n"
        ".intel_syntax noprefix\n"
        UKP_ASM_GPR_MACROS
        UKP_ASM_VECTOR_MACROS
        UKP_ASM_FLAGS_MACRO
        UKP_ASM_CONSTANT_FIELDS_MACRO
        R"(
        # UKP_RETURN_TRAMPOLINE name, last (15: xmm0-15; 1: the return
        # values xmm0-1 only), by_ret (1: leave with ret, see the exit)
        .macro UKP_RETURN_TRAMPOLINE name, last, by_ret
        # A nop before the entry, so that a backtrace that looks up
        # "return address - 1" does not land in the previous function.
        .p2align 4
        nop
        .globl \name
        .hidden \name
        .type \name, @function
\name:
        lea rsp, [rsp - 8]
        pushfq
        lea rsp, [rsp - %c[regs_size]]
        UKP_SAVE_GPRS
        .if \last == 1
        # The backup for an undo: only what a caller relying on the ABI can
        # see after the return (the callee-saved registers and the return
        # values); the rest is dead to it.
        .irp reg, rax, rdx, rbx, rbp, r12, r13, r14, r15
        mov [rsp - %c[regs_size] + ukp_return_offset_\reg], \reg
        .endr
        .else
        UKP_SAVE_GPRS -%c[regs_size]
        .endif
        mov rbx, rsp
        mov rax, [rbx + %c[regs_size]]
        mov [rbx + %c[flags]], rax
        lea rax, [rbx + %c[regs_size] + 16]
        mov [rbx + %c[sp]], rax
        # ip is the dispatcher's to set (the real return address).  The
        # backup gets only the general registers (flags are in this frame
        # already, sp is its address, the rest no undo needs); the return
        # path's loop, whose later handlers see an undone pt_regs whole,
        # and the resume below complete it.
        UKP_FILL_CONSTANT_FIELDS 0
        # The ABI returns with DF clear; a function that broke that gets it
        # cleared for our code.  A program single-stepping itself must not
        # step through our code and handlers: TF is cleared too (the steps
        # before this, and after the exit's popfq path has put both back,
        # land in the trampoline and are swallowed: is_in_trampoline_code).
        test byte ptr [rbx + %c[flags] + 1], 5   # TF (bit 8), DF (bit 10)
        jz 2f
        pushfq
        and qword ptr [rsp], -0x501
        popfq
2:      lea rsp, [rbx - %c[regs_size] - ukp_return_frame_size]
        lea rax, [rip + 70f]
        mov [rsp + ukp_return_frame_resume], rax
        and rsp, -64
        sub rsp, %c[vector_area]
        xor eax, eax
        cmp dword ptr [rip + ukp_return_trampoline_xinuse], 0
        je 1f
        mov ecx, 1
        xgetbv
1:      mov r12d, eax
        UKP_SAVE_LOW_VECTORS \last
        fnstsw ax
        movzx r13d, ax
        and r13d, 0x3800
        jz 4f
        fnsave [rsp + %c[fnsave]]
4:
        # r12d (XINUSE) and r13d (x87 TOP) for the resume, in one store.
        mov eax, r13d
        shl rax, 32
        or rax, r12
        mov [rbx - %c[regs_size] - ukp_return_frame_size + ukp_return_frame_state], rax
        mov rdi, rbx
        lea rsi, [rbx - %c[regs_size]]  # the backup
        call ukp_return_probe_hit
71:     mov [rbx + %c[regs_size] + 8], rax

        test r13d, r13d
        jz 5f
        frstor [rsp + %c[fnsave]]
5:
        UKP_RESTORE_LOW_VECTORS \last
        # A handler that left the upper halves of the vector registers in use
        # (hand-written AVX code without vzeroupper) would leave the program
        # paying for a dirty upper state, and garbage in upper halves that
        # were zero: when XINUSE said they were all zero, make them so again.
        test r12d, 0x44                 # AVX, ZMM_Hi256
        jnz 67f
        cmp dword ptr [rip + ukp_return_trampoline_has_avx], 0
        je 67f
        vzeroupper
67:
        mov rsp, rbx
        .if \last == 1
        # A caller relying on the ABI expects no arithmetic flag across a
        # call: only DF, TF or another system flag in what comes back (a
        # program single-stepping itself, a handler that changed one) needs
        # the restore.
        mov rcx, [rsp + %c[flags]]
        mov rax, [rsp + %c[regs_size]]
        xor rax, rcx
        test rax, %c[not_arithmetic]
        jnz 68f
        test ecx, %c[direction_or_trap]
        jz 69f
68:     push rcx
        popfq
69:
        # What a caller relying on the ABI can see; rcx, rsi, rdi and
        # r8-r11 are dead to it (the flags' check used rcx).
        .irp reg, rax, rdx, rbx, rbp, r12, r13, r14, r15
        mov \reg, [rsp + ukp_return_offset_\reg]
        .endr
        .else
        UKP_RESTORE_FLAGS %c[regs_size]
        UKP_RESTORE_GPRS
        .endif
        .if \by_ret
        # The function was entered by a call from its landing, so the
        # return stack buffer's top entry is its caller's own: ret is the
        # predicted way back.
        lea rsp, [rsp + %c[regs_size] + 8]
        ret
        .else
        # lea, not add: the flags are restored already.  jmp, not ret: the
        # function's own ret consumed the return-stack-buffer entry its
        # caller's call pushed, so a ret here would pop the caller's entry
        # and mispredict, and so would every return after it up the call
        # chain.  [rsp - 8] is in the red zone, which a signal skips.
        lea rsp, [rsp + %c[regs_size] + 16]
        jmp qword ptr [rsp - 8]
        .endif

70:     # A return-handler call abandoned (see above): rsp = the frame.
        cld
        lea rbx, [rsp + ukp_return_frame_size + %c[regs_size]]
        mov rax, [rbx + %c[regs_size]]
        mov [rbx - %c[regs_size] + %c[flags]], rax
        lea rax, [rbx + %c[regs_size] + 16]
        mov [rbx - %c[regs_size] + %c[sp]], rax
        mov r12d, [rsp + ukp_return_frame_state]
        mov r13d, [rsp + ukp_return_frame_state + 4]
        and rsp, -64
        sub rsp, %c[vector_area]
        mov rdi, rbx
        lea rsi, [rbx - %c[regs_size]]
        call ukp_return_abandoned
        jmp 71b
        .size \name, .-\name
        .endm

        .globl ukp_return_trampolines_start
        .hidden ukp_return_trampolines_start
        .p2align 4
ukp_return_trampolines_start:
        UKP_RETURN_TRAMPOLINE ukp_return_trampoline, 15, 0
        UKP_RETURN_TRAMPOLINE ukp_return_trampoline_by_ret, 15, 1
        UKP_RETURN_TRAMPOLINE ukp_return_trampoline_narrow, 1, 0
        UKP_RETURN_TRAMPOLINE ukp_return_trampoline_narrow_by_ret, 1, 1
        .globl ukp_return_trampolines_end
        .hidden ukp_return_trampolines_end
ukp_return_trampolines_end:
        .purgem UKP_RETURN_TRAMPOLINE
        )" UKP_ASM_PURGE_GPR_MACROS UKP_ASM_PURGE_VECTOR_MACROS UKP_ASM_PURGE_FLAGS_MACRO
        UKP_ASM_PURGE_CONSTANT_FIELDS_MACRO
        ".att_syntax prefix\n"
        ".popsection\n" ::UKP_PT_REGS_OPERANDS, UKP_FLAGS_OPERANDS, [vector_area] "i"(vector_area), [fnsave] "i"(fnsave_offset),
          [user_cs] "i"(user_cs), [user_ss] "i"(user_ss));
}

}  // namespace ukp::x86

namespace ukp::arch {

namespace {
void prepare_return_landings() noexcept;
}

namespace {
bool usable_avx() noexcept {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    const bool osxsave = (ecx & (1u << 27)) != 0, avx = (ecx & (1u << 28)) != 0;
    if (!osxsave || !avx) return false;
    std::uint32_t xcr0, xcr0_high;
    asm volatile("xgetbv" : "=a"(xcr0), "=d"(xcr0_high) : "c"(0));
    return (xcr0 & 0x6) == 0x6;  // SSE and AVX state on
}
}  // namespace

void prepare_return_trampoline() noexcept {
    __atomic_store_n(&ukp_return_trampoline_has_avx, usable_avx() ? 1u : 0u, __ATOMIC_RELAXED);
    if (x86::cpu_supports_trampolines()) __atomic_store_n(&ukp_return_trampoline_xinuse, 1, __ATOMIC_RELAXED);
    prepare_return_landings();
}

// --- Return landings ------------------------------------------------------
//
// An unwinder that reaches a hijacked slot finds a return address with no
// unwind information of its own, stops there, and the frames above it are
// never unwound.  glibc's thread cancellation is such an unwinder, and it
// cannot be interposed (it reaches libgcc through pointers of its own), so
// the C++ destructors and cleanups of the callers of a watched call would
// not run.  A return landing is a return address the unwinder can pass.
// Slot k (return_landing_size bytes):
//
//   +0   lea rsp, [rsp + 8]          the landing call (below)
//   +5   call qword ptr [entries_k]
//   +11  jmp qword ptr [jumps_k]     landing k: the hijacked return address
//
//   landing k's FDE, over [+10, +17) (an unwinder looks up "return address
//   - 1"): CFA = rsp (the caller's sp after the ret), and the return
//   address = the value stored at targets[k].
//
// The entry probe stores the real return address in targets[k], the
// trampoline variant in jumps[k] (the narrow one when no caller can keep
// values in caller-saved registers, see plan_optimization), and puts
// landing k's address in the slot.  The function's ret goes through the
// landing into the trampoline with every register as it left them.
//
// The landing call keeps the return stack buffer right.  A return probe's
// function returns to the landing, not to where its caller's call said, so
// that ret is mispredicted, ~10 ns a call.  An optimized entry can instead
// enter the function by a call from the landing: the stub of such an entry
// continues with `jmp [rsp - 8]`, and the C++ side puts there either the
// relocated region (entries_k) or, for a call it hijacked, the landing call,
// which drops the caller's return address from the stack and calls the
// relocated region: the call pushes landing k's address into the slot (the
// same word the hijack wrote) and onto the return stack buffer.  The
// function's ret is then predicted, and so is the trampoline's own `ret`
// to the real address (the by_ret variants), since the caller's entry is on
// top again.  All of it lies in the dead red zone of a function's entry.
//
// Each thread takes a block of landings and uses them as a stack
// (kretprobe.cpp); a thread without a block, or deeper than its block,
// hijacks with the plain trampoline address, which stays unwind-opaque.
//
// Cost: libgcc (GCC 12) looks at registered frames under a global mutex on
// every frame it unwinds once any are registered, so exception-heavy
// programs pay a lock per frame after the first return probe.

detail::ReturnLandings detail::return_landings;

namespace {

constexpr std::size_t landing_size = return_landing_size;
constexpr std::size_t landing_count = return_landing_count;
constexpr std::size_t landing_offset = return_landing_offset;
std::atomic<std::size_t> next_landing_block{0};

void put_uleb(std::vector<std::uint8_t>& out, std::uint64_t value) {
    do {
        std::uint8_t byte = value & 0x7f;
        value >>= 7;
        out.push_back(static_cast<std::uint8_t>(byte | (value ? 0x80 : 0)));
    } while (value);
}
template <class T>
void put(std::vector<std::uint8_t>& out, T value) {
    std::uint8_t bytes[sizeof value];
    std::memcpy(bytes, &value, sizeof value);
    out.insert(out.end(), bytes, bytes + sizeof value);
}
// Ends a CIE or FDE that began at `start`: pads with DW_CFA_nop to a
// multiple of 8 and fills in its length.
void close_entry(std::vector<std::uint8_t>& out, std::size_t start) {
    while ((out.size() - start) % 8 != 0) out.push_back(0);
    auto length = static_cast<std::uint32_t>(out.size() - start - 4);
    std::memcpy(out.data() + start, &length, 4);
}

// An .eh_frame image for the landings (absolute pointers: the CIE has no
// augmentation), ending with the zero terminator.
std::vector<std::uint8_t> landing_unwind_info(std::uint64_t code, const std::uint64_t* targets) {
    constexpr std::uint8_t cfa_def_cfa = 0x0c, cfa_val_expression = 0x16, op_addr = 0x03, op_deref = 0x06;
    constexpr std::uint8_t rsp = 7, return_address = 16;
    std::vector<std::uint8_t> out;
    out.reserve(32 + landing_count * 48);
    const std::size_t cie = out.size();
    put<std::uint32_t>(out, 0);  // length
    put<std::uint32_t>(out, 0);  // CIE id
    out.push_back(1);            // version
    out.push_back(0);            // augmentation ""
    put_uleb(out, 1);            // code alignment
    out.push_back(0x78);         // data alignment -8 (sleb)
    out.push_back(return_address);
    out.insert(out.end(), {cfa_def_cfa, rsp, 0});
    close_entry(out, cie);
    for (std::size_t k = 0; k < landing_count; ++k) {
        const std::size_t fde = out.size();
        put<std::uint32_t>(out, 0);
        put<std::uint32_t>(out, static_cast<std::uint32_t>(out.size() - cie));
        put<std::uint64_t>(out, code + k * landing_size + landing_offset - 1);
        put<std::uint64_t>(out, 7);  // the byte before the landing and its jmp
        out.insert(out.end(), {cfa_val_expression, return_address, 1 + 8 + 1, op_addr});
        put<std::uint64_t>(out, reinterpret_cast<std::uint64_t>(&targets[k]));
        out.push_back(op_deref);
        close_entry(out, fde);
    }
    put<std::uint32_t>(out, 0);
    return out;
}

void put_rip_relative(std::uint8_t* at, std::uint64_t instruction_end, std::uint64_t target) {
    auto displacement = static_cast<std::int32_t>(static_cast<std::int64_t>(target - instruction_end));
    std::memcpy(at, &displacement, 4);
}

extern "C" void __register_frame(void* begin);

void prepare_return_landings() noexcept {
    static std::once_flag once;
    std::call_once(once, [] {
        // One mapping: the code, then (writable) targets, entries and jumps,
        // within reach of the code's rip-relative operands.
        const std::size_t page = 4096;
        const std::size_t code_bytes = (landing_count * landing_size + page - 1) / page * page;
        const std::size_t table_bytes = landing_count * 8;
        void* mapping = mmap(nullptr, code_bytes + 3 * table_bytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mapping == MAP_FAILED) return;  // landings stay off: the plain trampoline
        auto* bytes = static_cast<std::uint8_t*>(mapping);
        const auto code = reinterpret_cast<std::uint64_t>(mapping);
        auto* targets = reinterpret_cast<std::uint64_t*>(bytes + code_bytes);
        auto* entries = targets + landing_count;
        auto* jumps = entries + landing_count;
        std::memset(bytes, 0xcc, code_bytes);
        for (std::size_t k = 0; k < landing_count; ++k) {
            std::uint8_t* at = bytes + k * landing_size;
            const std::uint64_t slot = code + k * landing_size;
            const std::uint8_t lea_rsp_plus_8[] = {0x48, 0x8d, 0x64, 0x24, 0x08};
            std::memcpy(at, lea_rsp_plus_8, sizeof lea_rsp_plus_8);
            at[5] = 0xff;  // call qword ptr [rip + disp32]
            at[6] = 0x15;
            static_assert(landing_offset == 11);  // the call's end
            put_rip_relative(at + 7, slot + 11, reinterpret_cast<std::uint64_t>(&entries[k]));
            at[11] = 0xff;  // jmp qword ptr [rip + disp32]
            at[12] = 0x25;
            put_rip_relative(at + 13, slot + 17, reinterpret_cast<std::uint64_t>(&jumps[k]));
            jumps[k] = return_trampoline_address();
        }
        if (mprotect(mapping, code_bytes, PROT_READ | PROT_EXEC) != 0) return;
        // Registered once and never freed: libgcc keeps pointers into it.
        auto* unwind = new std::vector<std::uint8_t>(landing_unwind_info(code, targets));
        __register_frame(unwind->data());
        detail::return_landings.targets = targets;
        detail::return_landings.entries = entries;
        detail::return_landings.jumps = jumps;
        detail::return_landings.code.store(code, std::memory_order_release);
    });
}

}  // namespace

bool is_in_return_trampoline(std::uint64_t pc) noexcept {
    return pc >= reinterpret_cast<std::uint64_t>(ukp_return_trampolines_start) &&
           pc < reinterpret_cast<std::uint64_t>(ukp_return_trampolines_end);
}

std::int32_t claim_return_landing_block() noexcept {
    if (detail::return_landings.code.load(std::memory_order_acquire) == 0) return -1;
    std::size_t block = next_landing_block.fetch_add(1, std::memory_order_relaxed);
    return block < return_landing_blocks ? static_cast<std::int32_t>(block) : -1;
}

}  // namespace ukp::arch
