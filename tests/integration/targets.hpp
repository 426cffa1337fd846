// The assembly functions of targets.S.
#pragma once

#include <cstdint>

extern "C" {
int boost_target(int x);
int push_target(int x);
extern char push_target_pop[], push_target_ret[];
int jcc_target(int x);
extern char jcc_target_branch[];
int jmp_target(int x);
int add_one(int x);
int call_target(int x);
extern char call_target_call[];
int indirect_call_target(int x);
extern char indirect_call_register[], indirect_call_memory[];
long riprel_target(void);
extern long riprel_value;
int nop_target(int x);
long blocking_read(int fd, void* buffer, unsigned long size);
extern char blocking_read_syscall[];
int load_target(const int* p);
int own_breakpoint(void);

struct clobber_state {
    std::uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15, flags, rsp;
};
void clobber_run(const clobber_state* in, clobber_state* out);
extern char clobber_site_boost[], clobber_site_emulate[], clobber_site_post[], clobber_site_end[];
void clobber_entry_function(void);

int opt_plain(int x);
extern char opt_plain_second[];
int opt_branch_into(int x);
int opt_call_in_region(int x);
int opt_indirect_jump(int x);
int opt_too_short(void);
int blacklisted_target(int x);
int opt_load(const int* p);
void vector_clobber_run(const void* in, void* out);
extern char vector_clobber_site[];
void vector_entry_function(void);
void vector_entry_run(const void* in, void* out);
void clobber_ymm_registers(void);
void ipa_callee(void);
extern char ipa_callee_return[];  // its ret
void ipa_caller_run(const void* in, void* out);
void return_values_function(void);
void return_values_run(const void* in, void* out);
void zmm_return_function(void);
void zmm_return_run(const void* in, void* out);
void clobber_zmm01(void);
void dirty_ymm_uppers(void);
int plain_return_function(int x);
unsigned call_and_read_xinuse(int (*function)(int), int x);
int tail_inner(int x);
int tail_outer(int x);
int tail_run(int x);
int step_callee(int x);
void single_step_call_run(void);

std::uint64_t flags_run(std::uint64_t flags);
extern char flags_site[];
void flags_entry_function(void);
std::uint64_t flags_run_narrow(std::uint64_t flags);
void flags_narrow_function(void);

void single_step_run(void);
extern char single_step_first[];
}

inline void* code_address(const void* p) { return const_cast<void*>(p); }
template <class F>
inline void* function_address(F* f) { return reinterpret_cast<void*>(f); }

// Fills the stack below the caller's frame with a pattern, so that an
// optimized hit from the caller finds none of an earlier hit's trampoline
// frame there: a test of what the trampoline must write on every hit would
// otherwise pass on what an earlier one left.
[[gnu::noinline]] inline void scrub_stack_below() {
    volatile unsigned char pad[8192];
    for (auto& byte : pad) byte = 0xa5;
}
