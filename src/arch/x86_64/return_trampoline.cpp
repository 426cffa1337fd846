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
//   like the optimized bodies do) come back exactly as they were.
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
//   below      struct pt_regs; a second copy of its general registers,
//              flags and sp (the backup a faulting handler's changes are
//              undone from); the 64-byte aligned vector area
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
__attribute__((visibility("hidden"))) std::uint32_t ukp_return_trampoline_xinuse = 0;
// core/kretprobe.cpp: runs the return handlers (`backup`: a second copy of
// the general registers, flags and sp), returns the real address.
std::uint64_t ukp_return_probe_hit(pt_regs* regs, pt_regs* backup);
extern char ukp_return_trampoline[];
}

namespace ukp::x86 {

namespace {
constexpr std::size_t vector_area = 64 * 16 + 128;  // zmm0-15, then the fnsave image (108 bytes)
constexpr std::size_t fnsave_offset = 64 * 16;
static_assert(vector_area % 64 == 0);
}  // namespace

__attribute__((used)) static void define_return_trampoline() {
    asm volatile(
        ".pushsection .text\n"
        ".intel_syntax noprefix\n"
        UKP_ASM_GPR_MACROS
        UKP_ASM_VECTOR_MACROS
        UKP_ASM_FLAGS_MACRO
        R"(
        # A nop before the entry, so that a backtrace that looks up
        # "return address - 1" does not land in the previous function.
        .p2align 4
        nop
        .globl ukp_return_trampoline
        .hidden ukp_return_trampoline
        .type ukp_return_trampoline, @function
ukp_return_trampoline:
        lea rsp, [rsp - 8]
        pushfq
        lea rsp, [rsp - %c[regs_size]]
        UKP_SAVE_GPRS
        UKP_SAVE_GPRS -%c[regs_size]
        mov rbx, rsp
        mov rax, [rbx + %c[regs_size]]
        mov [rbx + %c[flags]], rax
        mov [rbx - %c[regs_size] + %c[flags]], rax
        lea rax, [rbx + %c[regs_size] + 16]
        mov [rbx + %c[sp]], rax
        mov [rbx - %c[regs_size] + %c[sp]], rax
        mov rax, -1
        mov [rbx + %c[orig_ax]], rax
        mov [rbx - %c[regs_size] + %c[orig_ax]], rax
        xor eax, eax
        mov [rbx + %c[ip]], rax
        mov [rbx - %c[regs_size] + %c[ip]], rax
        mov eax, %c[user_cs]
        mov [rbx + %c[cs]], rax
        mov [rbx - %c[regs_size] + %c[cs]], rax
        mov eax, %c[user_ss]
        mov [rbx + %c[ss]], rax
        mov [rbx - %c[regs_size] + %c[ss]], rax
        # The ABI returns with DF clear; a function that broke that gets it
        # cleared for our code (the exit's popfq path puts it back).
        test byte ptr [rbx + %c[flags] + 1], 4
        jz 2f
        cld
2:      lea rsp, [rbx - %c[regs_size]]
        and rsp, -64
        sub rsp, %c[vector_area]
        xor eax, eax
        cmp dword ptr [rip + ukp_return_trampoline_xinuse], 0
        je 1f
        mov ecx, 1
        xgetbv
1:      mov r12d, eax
        UKP_SAVE_LOW_VECTORS 15
        fnstsw ax
        movzx r13d, ax
        and r13d, 0x3800
        jz 4f
        fnsave [rsp + %c[fnsave]]
4:
        mov rdi, rbx
        lea rsi, [rbx - %c[regs_size]]  # the backup
        call ukp_return_probe_hit
        mov [rbx + %c[regs_size] + 8], rax

        test r13d, r13d
        jz 5f
        frstor [rsp + %c[fnsave]]
5:
        UKP_RESTORE_LOW_VECTORS 15
        mov rsp, rbx
        UKP_RESTORE_FLAGS %c[regs_size]
        UKP_RESTORE_GPRS
        # lea, not add: the flags are restored already.  jmp, not ret: the
        # function's own ret consumed the return-stack-buffer entry its
        # caller's call pushed, so a ret here would pop the caller's entry
        # and mispredict, and so would every return after it up the call
        # chain.  [rsp - 8] is in the red zone, which a signal skips.
        lea rsp, [rsp + %c[regs_size] + 16]
        jmp qword ptr [rsp - 8]
        .size ukp_return_trampoline, .-ukp_return_trampoline
        )" UKP_ASM_PURGE_GPR_MACROS UKP_ASM_PURGE_VECTOR_MACROS UKP_ASM_PURGE_FLAGS_MACRO
        ".att_syntax prefix\n"
        ".popsection\n" ::UKP_PT_REGS_OPERANDS, UKP_FLAGS_OPERANDS, [vector_area] "i"(vector_area), [fnsave] "i"(fnsave_offset),
          [user_cs] "i"(user_cs), [user_ss] "i"(user_ss));
}

}  // namespace ukp::x86

namespace ukp::arch {

namespace {
void prepare_return_landings() noexcept;
}

void prepare_return_trampoline() noexcept {
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
// not run.  A return landing is a return address the unwinder can pass:
//
//   landing k:   pad byte, then `jmp [rip + to_trampoline]`
//   its FDE:     CFA = rsp (the caller's sp after the ret), and the return
//                address = the value stored at targets[k]
//
// The entry probe stores the real return address in targets[k] and puts
// landing k's address in the slot; the function's ret then goes through
// the landing into the trampoline with every register as it left them.
// The FDE covers the pad byte because an unwinder looks up "return address
// - 1".  Each thread takes a block of landings and uses them as a stack
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
        put<std::uint64_t>(out, code + k * landing_size);
        put<std::uint64_t>(out, landing_size);
        out.insert(out.end(), {cfa_val_expression, return_address, 1 + 8 + 1, op_addr});
        put<std::uint64_t>(out, reinterpret_cast<std::uint64_t>(&targets[k]));
        out.push_back(op_deref);
        close_entry(out, fde);
    }
    put<std::uint32_t>(out, 0);
    return out;
}

extern "C" void __register_frame(void* begin);

void prepare_return_landings() noexcept {
    static std::once_flag once;
    std::call_once(once, [] {
        const std::size_t code_bytes = landing_count * landing_size + 8;
        void* code = mmap(nullptr, code_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        void* targets = mmap(nullptr, landing_count * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (code == MAP_FAILED || targets == MAP_FAILED) return;  // landings stay off: plain trampoline
        auto* bytes = static_cast<std::uint8_t*>(code);
        const std::size_t pointer = landing_count * landing_size;
        const std::uint64_t trampoline = return_trampoline_address();
        std::memcpy(bytes + pointer, &trampoline, 8);
        for (std::size_t k = 0; k < landing_count; ++k) {
            std::uint8_t* at = bytes + k * landing_size;
            at[0] = 0x90;  // the pad an unwinder's "return address - 1" lands on
            at[1] = 0xff;  // jmp qword ptr [rip + disp32]
            at[2] = 0x25;
            auto displacement = static_cast<std::int32_t>(pointer - (k * landing_size + 7));
            std::memcpy(at + 3, &displacement, 4);
            at[7] = 0xcc;
        }
        if (mprotect(code, code_bytes, PROT_READ | PROT_EXEC) != 0) return;
        // Registered once and never freed: libgcc keeps pointers into it.
        auto* unwind = new std::vector<std::uint8_t>(
            landing_unwind_info(reinterpret_cast<std::uint64_t>(code), static_cast<std::uint64_t*>(targets)));
        __register_frame(unwind->data());
        detail::return_landings.targets = static_cast<std::uint64_t*>(targets);
        detail::return_landings.code.store(reinterpret_cast<std::uint64_t>(code), std::memory_order_release);
    });
}

}  // namespace

std::int32_t claim_return_landing_block() noexcept {
    if (detail::return_landings.code.load(std::memory_order_acquire) == 0) return -1;
    std::size_t block = next_landing_block.fetch_add(1, std::memory_order_relaxed);
    return block < return_landing_blocks ? static_cast<std::int32_t>(block) : -1;
}

}  // namespace ukp::arch
