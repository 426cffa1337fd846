// Reads of memory that may not be there, for handlers and the tracer's fetch
// args (the kernel's copy_from_user_nofault / strncpy_from_user_nofault).
//
// The same scheme as the kernel's exception tables: the loads that may
// fault sit between two labels, and the fault handler (core/dispatch.cpp)
// checks the faulting PC against that range before anything else; when it
// is there, it resumes the thread at the routine's fixup, which returns
// failure.  A successful read costs what the loads cost: no system call
// (process_vm_readv would cost ~0.5 µs per read), no signal mask change.
//
// Facts it relies on:
// - A bad address (unmapped, PROT_NONE, non-canonical, beyond the end of a
//   mapped file) raises SIGSEGV or SIGBUS on the load itself, with the PC
//   at the load; the engine owns both signals while any probe is registered.
// - `rep movsb` leaves rcx = the bytes not yet copied when it faults.
// - Only rax, rcx, rdx, rsi, rdi and flags are touched: all caller-saved.
#include <cstddef>
#include <cstdint>

#include "arch/backend.hpp"

extern "C" {
std::size_t ukp_copy_nofault(void* destination, const void* source, std::size_t size) noexcept;
long ukp_string_copy_nofault(char* destination, const void* source, std::size_t size) noexcept;
extern const char ukp_nofault_begin[];
extern const char ukp_nofault_end[];
extern const char ukp_copy_nofault_fixup[];
extern const char ukp_string_copy_nofault_fixup[];
}

// ukp_copy_nofault(rdi = destination, rsi = source, rdx = size) -> rax =
// bytes not copied.  Eight bytes, the common fetch, take one load.
// ukp_string_copy_nofault(rdi, rsi, rdx = size) -> rax = the string's
// length when a NUL was found within size bytes (it is copied too), size
// when none was, and on a fault ~N (negative) where N bytes were copied.
asm(R"(
    .text
    .p2align 4
    .globl ukp_copy_nofault
    .hidden ukp_copy_nofault
    .type ukp_copy_nofault, @function
ukp_copy_nofault:
    .cfi_startproc
    mov %rdx, %rcx
    cmp $8, %rdx
    jne 1f
    .globl ukp_nofault_begin
    .hidden ukp_nofault_begin
ukp_nofault_begin:
    mov (%rsi), %rax
    mov %rax, (%rdi)
    xor %eax, %eax
    ret
1:  rep movsb
    mov %rcx, %rax
    ret
    .globl ukp_copy_nofault_fixup
    .hidden ukp_copy_nofault_fixup
ukp_copy_nofault_fixup:
    mov %rcx, %rax
    ret
    .cfi_endproc
    .size ukp_copy_nofault, .-ukp_copy_nofault

    .p2align 4
    .globl ukp_string_copy_nofault
    .hidden ukp_string_copy_nofault
    .type ukp_string_copy_nofault, @function
ukp_string_copy_nofault:
    .cfi_startproc
    xor %eax, %eax
    test %rdx, %rdx
    jz 3f
2:  movzbl (%rsi,%rax), %ecx
    mov %cl, (%rdi,%rax)
    test %cl, %cl
    jz 3f
    inc %rax
    cmp %rdx, %rax
    jb 2b
3:  ret
    .globl ukp_nofault_end
    .hidden ukp_nofault_end
ukp_nofault_end:
    .globl ukp_string_copy_nofault_fixup
    .hidden ukp_string_copy_nofault_fixup
ukp_string_copy_nofault_fixup:
    not %rax
    ret
    .cfi_endproc
    .size ukp_string_copy_nofault, .-ukp_string_copy_nofault
)");

namespace ukp::arch {

std::size_t copy_nofault(void* destination, const void* source, std::size_t size) noexcept {
    return ukp_copy_nofault(destination, source, size);
}

long string_copy_nofault(char* destination, const void* source, std::size_t size) noexcept {
    return ukp_string_copy_nofault(destination, source, size);
}

std::uint64_t nofault_fixup(std::uint64_t pc) noexcept {
    auto begin = reinterpret_cast<std::uint64_t>(ukp_nofault_begin);
    auto end = reinterpret_cast<std::uint64_t>(ukp_nofault_end);
    if (pc < begin || pc >= end) return 0;
    // The string routine starts after the copy routine's fixup.
    auto string_routine = reinterpret_cast<std::uint64_t>(ukp_string_copy_nofault);
    return reinterpret_cast<std::uint64_t>(pc >= string_routine ? ukp_string_copy_nofault_fixup
                                                                 : ukp_copy_nofault_fixup);
}

}  // namespace ukp::arch
