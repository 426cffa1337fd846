# Functions whose instructions the integration tests must know exactly, so
# that each test probes the instruction form it names.  Every function is a
# real ELF function symbol (.type/.size), so symbol+offset and the
# instruction-boundary check work on them as on compiled code.
        .intel_syntax noprefix
        .text

.macro FUNCTION name
        .globl \name
        .type \name, @function
        .p2align 4
\name:
.endm
.macro END name
        .size \name, .-\name
.endm

# int boost_target(int x) { return 2x + 1; }
FUNCTION boost_target
        lea eax, [rdi + rdi*1 + 1]      # 8d 44 3f 01: boosted
        ret
END boost_target

# int push_target(int x) { return x + 5; } with push/pop of a callee-saved register
FUNCTION push_target
        push rbx                        # 53: emulated push
        mov ebx, edi
        lea eax, [rbx + 5]
        pop rbx                         # 5b: emulated pop
        ret                             # c3: emulated ret
END push_target
        .globl push_target_pop
        .set push_target_pop, push_target + 6
        .globl push_target_ret
        .set push_target_ret, push_target + 7

# int jcc_target(int x) { return x == 0 ? 2 : 1; }
FUNCTION jcc_target
        test edi, edi                   # 85 ff
jcc_target_branch:
        .globl jcc_target_branch
        jz 1f                           # 74 06: jcc rel8, emulated
        mov eax, 1
        ret
1:      mov eax, 2
        ret
END jcc_target

# int jmp_target(int x) { return x; } through a jmp over a ud2
FUNCTION jmp_target
        jmp 1f                          # eb 02: jmp rel8, emulated
        ud2
1:      mov eax, edi
        ret
END jmp_target

FUNCTION add_one
        lea eax, [rdi + 1]
        ret
END add_one

# int call_target(int x) { return add_one(x) * 2; }
FUNCTION call_target
        sub rsp, 8
call_target_call:
        .globl call_target_call
        call add_one                    # e8 rel32: emulated call
        add eax, eax
        add rsp, 8
        ret
END call_target

# int indirect_call_target(int x): call through a register and through memory
FUNCTION indirect_call_target
        sub rsp, 8
        lea rax, [rip + add_one]
indirect_call_register:
        .globl indirect_call_register
        call rax                        # ff d0: emulated indirect call
        mov edi, eax
indirect_call_memory:
        .globl indirect_call_memory
        call qword ptr [rip + add_one_pointer]   # ff 15 rel32: emulated, rip-relative
        add rsp, 8
        ret
END indirect_call_target

# long riprel_target(void) { return riprel_value; }
FUNCTION riprel_target
        mov rax, qword ptr [rip + riprel_value]  # 48 8b 05 rel32: boosted, displacement rebased
        ret
END riprel_target

# int nop_target(int x) { return x; } starting with endbr64 and a long nop
FUNCTION nop_target
        endbr64                         # f3 0f 1e fa: emulated nop
        nop dword ptr [rax + rax*1 + 0] # 0f 1f 44 00 00
        mov eax, edi
        ret
END nop_target

# long blocking_read(int fd, void *buffer, unsigned long size): read(2) whose
# syscall instruction is probed, so the thread blocks inside the slot.
FUNCTION blocking_read
        mov eax, 0                      # __NR_read
blocking_read_syscall:
        .globl blocking_read_syscall
        syscall                         # 0f 05: boosted
        ret
END blocking_read

# int load_target(const int *p) { return *p; }
FUNCTION load_target
        mov eax, dword ptr [rdi]        # 8b 07: boosted; faults in the slot on a bad pointer
        ret
END load_target

# The program's own breakpoint: int3; returns 7.
FUNCTION own_breakpoint
        int3
        mov eax, 7
        ret
END own_breakpoint

# void clobber_run(const struct clobber_state *in, struct clobber_state *out)
# Loads every general register and the flags from *in, runs three probe
# sites that change nothing, and stores them all to *out.  Layout of
# struct clobber_state: rax rbx rcx rdx rsi rdi rbp r8..r15 flags (8 bytes each),
# then the rsp seen at the sites.
FUNCTION clobber_run
        push rbp
        push rbx
        push r12
        push r13
        push r14
        push r15
        push rsi                        # out
        push qword ptr [rdi + 15*8]     # flags
        popfq
        mov rax, [rdi + 0*8]
        mov rbx, [rdi + 1*8]
        mov rcx, [rdi + 2*8]
        mov rdx, [rdi + 3*8]
        mov rsi, [rdi + 4*8]
        mov rbp, [rdi + 6*8]
        mov r8,  [rdi + 7*8]
        mov r9,  [rdi + 8*8]
        mov r10, [rdi + 9*8]
        mov r11, [rdi + 10*8]
        mov r12, [rdi + 11*8]
        mov r13, [rdi + 12*8]
        mov r14, [rdi + 13*8]
        mov r15, [rdi + 14*8]
        mov rdi, [rdi + 5*8]
        # An entry probe site: a call with every register loaded.  The
        # callee changes nothing, so every register must come back as it was.
        call clobber_entry_function
        .globl clobber_site_boost
clobber_site_boost:
        lea r11, [r11 + 0]              # 4d 8d 5b 00: boosted
        .globl clobber_site_emulate
clobber_site_emulate:
        push r12                        # 41 54: emulated
        pop r12                         # 41 5c
        .globl clobber_site_post
clobber_site_post:
        xchg r13, r13                   # 4d 87 ed: boosted, used with a post-handler
        .globl clobber_site_end
clobber_site_end:
        push rdi
        mov rdi, [rsp + 8]              # out
        mov [rdi + 0*8], rax
        mov [rdi + 1*8], rbx
        mov [rdi + 2*8], rcx
        mov [rdi + 3*8], rdx
        mov [rdi + 4*8], rsi
        pop rax
        mov [rdi + 5*8], rax
        mov [rdi + 6*8], rbp
        mov [rdi + 7*8], r8
        mov [rdi + 8*8], r9
        mov [rdi + 9*8], r10
        mov [rdi + 10*8], r11
        mov [rdi + 11*8], r12
        mov [rdi + 12*8], r13
        mov [rdi + 13*8], r14
        mov [rdi + 14*8], r15
        pushfq
        pop rax
        mov [rdi + 15*8], rax
        mov rax, rsp                    # rsp as it was at the sites
        mov [rdi + 16*8], rax
        pop rsi
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbx
        pop rbp
        ret
END clobber_run

# Called by clobber_run with every register loaded; changes nothing.
FUNCTION clobber_entry_function
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        nop
        ret
END clobber_entry_function

# The end of flags_run and its twin: the flags as they are, returned with
# the ones the ABI expects.
.macro FLAGS_RETURN
        pushfq
        pop rax
        push 0x202                      # IF and the reserved bit only
        popfq
        ret
.endm

# std::uint64_t flags_run(std::uint64_t flags): loads `flags`, calls an
# entry probe site, passes a mid-function site, and returns the flags as
# they are after both.  It returns with the flags the ABI expects (DF and AC
# clear), whatever it was given or a handler set.
FUNCTION flags_run
        push rdi
        popfq
        call flags_entry_function
        .globl flags_site
flags_site:
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        lea r11, [r11 + 0]              # 4d 8d 5b 00
FLAGS_RETURN
END flags_run

FUNCTION flags_entry_function
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        nop
        ret
END flags_entry_function

# flags_run's twin for a narrow return: flags_run_narrow calls
# flags_narrow_function through a register, and no code calls it directly,
# so that its return probe takes the narrow trampoline.
FUNCTION flags_run_narrow
        push rdi
        popfq
        lea rax, [rip + flags_narrow_function]
        call rax
FLAGS_RETURN
END flags_run_narrow

FUNCTION flags_narrow_function
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        nop
        ret
END flags_narrow_function

# void single_step_run(void): sets TF, runs a few instructions, clears TF.
# The program's own SIGTRAP handler sees one TRAP_TRACE per instruction.
FUNCTION single_step_run
        pushfq
        or qword ptr [rsp], 0x100
        popfq
        .globl single_step_first
single_step_first:
        lea rax, [rax + 1]              # boosted
        push rbx                        # emulated
        pop rbx
        nop                             # emulated
        lea rcx, [rcx + 2]              # boosted (used with a post-handler)
        pushfq
        and qword ptr [rsp], -0x101
        popfq
        ret
END single_step_run

# void single_step_call_run(void): sets TF, calls step_callee (which returns
# its argument plus one), clears TF: steps into a call and back out of it.
FUNCTION step_callee
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        nop
        lea eax, [rdi + 1]
        ret
END step_callee

FUNCTION single_step_call_run
        push rbx
        pushfq
        or qword ptr [rsp], 0x100
        popfq
        mov edi, 41
        call step_callee
        mov ebx, eax
        pushfq
        and qword ptr [rsp], -0x101
        popfq
        pop rbx
        ret
END single_step_call_run

# --- Optimized probes -------------------------------------------------------

# int opt_plain(int x) { return x + 3; }: a 5-byte region at the entry and
# another at +2; nothing branches into either.
FUNCTION opt_plain
        mov eax, edi                    # 89 f8
        .globl opt_plain_second
opt_plain_second:
        add eax, 1                      # 83 c0 01
        add eax, 2                      # 83 c0 02
        ret
END opt_plain

# int opt_branch_into(int x): loops back to +2, inside the entry's region.
FUNCTION opt_branch_into
        mov eax, edi                    # 89 f8
1:      add eax, 1                      # 83 c0 01  <- jl target
        cmp eax, 10
        jl 1b
        ret
END opt_branch_into

# int opt_call_in_region(int x) { return add_one(x); } with the call inside
# the entry's region.
FUNCTION opt_call_in_region
        sub rsp, 8                      # 48 83 ec 08
        call add_one                    # e8 rel32
        add rsp, 8
        ret
END opt_call_in_region

# int opt_indirect_jump(int x) { return x + 1; } through `jmp rcx`.
FUNCTION opt_indirect_jump
        mov eax, edi
        add eax, 1
        lea rcx, [rip + 1f]
        jmp rcx                         # ff e1: targets unknown to the analysis
        ud2
1:      ret
END opt_indirect_jump

# int blacklisted_target(int x) { return x + 2; }: blacklisted by a test,
# so no other test may use it.
FUNCTION blacklisted_target
        mov eax, edi
        add eax, 1
        add eax, 1
        ret
END blacklisted_target

# int opt_too_short(void) { return 0; }: 3 bytes.
FUNCTION opt_too_short
        xor eax, eax
        ret
END opt_too_short

# int opt_load(const int *p) { return *p; }: the load is in the region.
FUNCTION opt_load
        mov eax, dword ptr [rdi]        # 8b 07: faults in the stub on a bad pointer
        add eax, 0                      # 83 c0 00
        ret
END opt_load

# void vector_clobber_run(const void *in, void *out): ymm0-15 from in
# (16 x 32 bytes), a mid-function probe site, ymm0-15 to out.
FUNCTION vector_clobber_run
        .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu ymm\i, [rdi + 32*\i]
        .endr
        .globl vector_clobber_site
vector_clobber_site:
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        nop
        .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu [rsi + 32*\i], ymm\i
        .endr
        vzeroupper
        ret
END vector_clobber_run

# An entry probe site: the ABI's argument registers (ymm0-7) are live.
FUNCTION vector_entry_function
        lea r11, [r11 + 0]
        nop
        ret
END vector_entry_function

# void vector_entry_run(const void *in, void *out): ymm0-7 from in, a call
# to vector_entry_function through a register (as through the PLT: only
# the argument registers carry anything into it), ymm0-7 to out.
FUNCTION vector_entry_run
        push rbx
        mov rbx, rsi
        .irp i, 0,1,2,3,4,5,6,7
        vmovdqu ymm\i, [rdi + 32*\i]
        .endr
        lea rax, [rip + vector_entry_function]
        call rax
        .irp i, 0,1,2,3,4,5,6,7
        vmovdqu [rbx + 32*\i], ymm\i
        .endr
        vzeroupper
        pop rbx
        ret
END vector_entry_run

# void clobber_ymm_registers(void): all ones into ymm0-15, then
# vzeroupper, as a handler built with -mavx2 (or glibc's AVX2 string
# functions) may leave them.  Every vector register is caller-saved.
FUNCTION clobber_ymm_registers
        vpcmpeqd ymm0, ymm0, ymm0
        .irp i, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqa ymm\i, ymm0
        .endr
        vzeroupper
        ret
END clobber_ymm_registers

# What -fipa-ra does: ipa_caller_run(in, out) loads ymm0-15 from in, calls
# ipa_callee directly, and stores ymm0-15 to out, as a caller does that keeps
# its own values in the registers a callee it was compiled with leaves alone.
FUNCTION ipa_callee
        lea r11, [r11 + 0]
        nop
        .globl ipa_callee_return
ipa_callee_return:
        ret
END ipa_callee

FUNCTION ipa_caller_run
        push rbx
        mov rbx, rsi
        .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu ymm\i, [rdi + 32*\i]
        .endr
        call ipa_callee
        .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqu [rbx + 32*\i], ymm\i
        .endr
        vzeroupper
        pop rbx
        ret
END ipa_caller_run

# What a return probe must keep at a return: return_values_run(in, out)
# loads rbx, rbp, r12-r15 from in[0..5] and calls return_values_function
# through a register (as through the PLT: the caller relies on nothing but
# the ABI); that loads rax, rdx from in[6..7] and ymm0, ymm1 from in + 64
# and in + 96, and returns.  Then out[0..7] get rbx, rbp, r12-r15, rax, rdx
# and out + 64, out + 96 get ymm0, ymm1.
FUNCTION return_values_function
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        mov rax, [rdi + 48]
        mov rdx, [rdi + 56]
        vmovdqu ymm0, [rdi + 64]
        vmovdqu ymm1, [rdi + 96]
        ret
END return_values_function

FUNCTION return_values_run
        push rbx
        push rbp
        push r12
        push r13
        push r14
        push r15
        push rsi
        mov rbx, [rdi]
        mov rbp, [rdi + 8]
        mov r12, [rdi + 16]
        mov r13, [rdi + 24]
        mov r14, [rdi + 32]
        mov r15, [rdi + 40]
        lea rax, [rip + return_values_function]
        call rax
        pop rsi
        mov [rsi], rbx
        mov [rsi + 8], rbp
        mov [rsi + 16], r12
        mov [rsi + 24], r13
        mov [rsi + 32], r14
        mov [rsi + 40], r15
        mov [rsi + 48], rax
        mov [rsi + 56], rdx
        vmovdqu [rsi + 64], ymm0
        vmovdqu [rsi + 96], ymm1
        vzeroupper
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbp
        pop rbx
        ret
END return_values_run

# The same for AVX-512 return values: zmm_return_run(in, out) calls
# zmm_return_function through a register; that loads zmm0, zmm1 from in and
# in + 64 and returns; out and out + 64 get zmm0, zmm1.
FUNCTION zmm_return_function
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        vmovdqu64 zmm0, [rdi]
        vmovdqu64 zmm1, [rdi + 64]
        ret
END zmm_return_function

FUNCTION zmm_return_run
        push rbx
        mov rbx, rsi
        lea rax, [rip + zmm_return_function]
        call rax
        vmovdqu64 [rbx], zmm0
        vmovdqu64 [rbx + 64], zmm1
        vzeroupper
        pop rbx
        ret
END zmm_return_run

# void clobber_zmm01(void): all ones into zmm0 and zmm1, as a handler built
# for AVX-512 may leave them (no vzeroupper: it would clear them itself).
FUNCTION clobber_zmm01
        vpternlogd zmm0, zmm0, zmm0, 0xff
        vmovdqa64 zmm1, zmm0
        ret
END clobber_zmm01

# void dirty_ymm_uppers(void): all ones into ymm0-15 and no vzeroupper, as
# hand-written AVX code may leave them: the upper state is in use after it.
FUNCTION dirty_ymm_uppers
        vpcmpeqd ymm0, ymm0, ymm0
        .irp i, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        vmovdqa ymm\i, ymm0
        .endr
        ret
END dirty_ymm_uppers

# int plain_return_function(int x): x + 1, for return probes.
FUNCTION plain_return_function
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        lea eax, [rdi + 1]
        ret
END plain_return_function

# unsigned call_and_read_xinuse(int (*function)(int), int x): calls
# function(x) through a register with the upper vector state clean
# (vzeroupper), and returns XINUSE (xgetbv with ECX=1) right after.
FUNCTION call_and_read_xinuse
        push rbx
        vzeroupper
        mov rax, rdi
        mov edi, esi
        call rax
        mov ecx, 1
        xgetbv
        pop rbx
        ret
END call_and_read_xinuse

# int tail_run(int x) { return tail_outer(x); } through a register, where
# tail_outer(x) tail-calls tail_inner(x + 1), which returns x + 2: the
# tail-called function returns straight to tail_run, through the slot the
# return probe on tail_outer hijacked.
FUNCTION tail_inner
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        nop
        lea eax, [rdi + 1]
        ret
END tail_inner

FUNCTION tail_outer
        lea r11, [r11 + 0]              # 4d 8d 5b 00
        nop
        add edi, 1
        jmp tail_inner
END tail_outer

FUNCTION tail_run
        sub rsp, 8
        lea rax, [rip + tail_outer]
        call rax
        add rsp, 8
        ret
END tail_run

        .data
        .p2align 3
        .globl riprel_value
riprel_value:
        .quad 0x1122334455667788
add_one_pointer:
        .quad add_one

        .section .note.GNU-stack,"",@progbits
