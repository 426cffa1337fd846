// The x86-64 probe backend: what the generic engine asks of an architecture.
//
// Facts this relies on:
// - int3 (CC) traps with RIP pointing after it; the kernel reports it as
//   SIGTRAP with si_code SI_KERNEL.  A TF single-step reports TRAP_TRACE,
//   a hardware breakpoint TRAP_HWBKPT, kill()/tgkill() SI_USER/SI_TKILL.
// - On a fault, RIP is the faulting instruction's first byte.
// - The ucontext's gregs array (REG_R8 ... REG_RIP, REG_EFL) holds what
//   rt_sigreturn restores; writing it is how a handler changes registers.
// - Flag TF is bit 8 of RFLAGS.
#include "arch/backend.hpp"

#include <ucontext.h>

#include <algorithm>
#include <cstring>
#include <fmt/format.h>

#include "arch/x86_64/relocator.hpp"

namespace ukp::arch {

namespace {
constexpr std::uint8_t int3_opcode = 0xCC;
}  // namespace

Result<PreparedInsn> prepare_insn(std::uint64_t address, std::span<const std::uint8_t> code) {
    auto insn = x86::decode_one(code, address);
    if (!insn) return std::unexpected(insn.error());
    auto probe = x86::analyze_probe_insn(*insn);
    if (!probe) return std::unexpected(probe.error());
    return PreparedInsn{*probe, 0, 0};
}


std::string describe_insn(const PreparedInsn& insn) { return x86::disassemble(insn.probe.insn); }

Result<void> check_boundary(std::span<const std::uint8_t> function_code, std::uint64_t function_start,
                            std::uint64_t address) {
    return x86::check_instruction_boundary(function_code, function_start, address);
}

Result<void> build_slot(PreparedInsn& insn, std::uint64_t slot_address, std::span<std::uint8_t, slot_size> out) {
    // Filling with int3 means a stray jump into padding traps instead of
    // running whatever bytes happen to be there.
    std::memset(out.data(), int3_opcode, out.size());
    const auto& original = insn.probe.insn;

    // Boost form: relocated instruction; jmp rel32 -> original next instruction.
    auto boost = out.subspan(0, post_form_offset);
    auto copied = x86::relocate(original, slot_address, boost);
    if (!copied) return std::unexpected(copied.error());
    auto jump = x86::emit_jmp_rel32(slot_address + *copied, original.next_address(), boost.subspan(*copied));
    if (!jump) return std::unexpected(jump.error());
    insn.boost_copy_length = static_cast<std::uint8_t>(*copied);

    // Post form: relocated instruction; int3 (the post trap; already there from the fill).
    auto post = out.subspan(post_form_offset);
    auto post_copied = x86::relocate(original, slot_address + post_form_offset, post);
    if (!post_copied) return std::unexpected(post_copied.error());
    insn.post_copy_length = static_cast<std::uint8_t>(*post_copied);
    return {};
}

std::uint64_t boost_entry(std::uint64_t slot_address) noexcept { return slot_address; }
std::uint64_t post_entry(std::uint64_t slot_address) noexcept { return slot_address + post_form_offset; }

SlotPlace locate_in_slot(const PreparedInsn& insn, std::uint64_t slot_address, std::uint64_t pc) noexcept {
    if (pc < slot_address || pc >= slot_address + slot_size) return SlotPlace::Outside;
    std::uint64_t offset = pc - slot_address;
    if (offset < insn.boost_copy_length) return SlotPlace::InDisplacedInsn;
    if (offset == insn.boost_copy_length) return SlotPlace::AfterBoostedInsn;
    if (offset < post_form_offset) return SlotPlace::Outside;  // inside the jmp back
    offset -= post_form_offset;
    if (offset < insn.post_copy_length) return SlotPlace::InDisplacedInsn;
    if (offset == insn.post_copy_length) return SlotPlace::AtPostBreakpoint;
    return SlotPlace::Outside;
}

void load_regs(const void* ucontext, pt_regs& regs) noexcept {
    const auto& g = static_cast<const ucontext_t*>(ucontext)->uc_mcontext.gregs;
    regs.r15 = g[REG_R15];
    regs.r14 = g[REG_R14];
    regs.r13 = g[REG_R13];
    regs.r12 = g[REG_R12];
    regs.bp = g[REG_RBP];
    regs.bx = g[REG_RBX];
    regs.r11 = g[REG_R11];
    regs.r10 = g[REG_R10];
    regs.r9 = g[REG_R9];
    regs.r8 = g[REG_R8];
    regs.ax = g[REG_RAX];
    regs.cx = g[REG_RCX];
    regs.dx = g[REG_RDX];
    regs.si = g[REG_RSI];
    regs.di = g[REG_RDI];
    regs.orig_ax = ~0ul;
    regs.ip = g[REG_RIP];
    regs.cs = static_cast<std::uint64_t>(g[REG_CSGSFS]) & 0xffff;
    regs.flags = g[REG_EFL];
    regs.sp = g[REG_RSP];
    regs.ss = x86::user_ss;  // not in the ucontext, constant for 64-bit user code
}

void store_regs(const pt_regs& regs, void* ucontext) noexcept {
    auto& g = static_cast<ucontext_t*>(ucontext)->uc_mcontext.gregs;
    g[REG_R15] = static_cast<greg_t>(regs.r15);
    g[REG_R14] = static_cast<greg_t>(regs.r14);
    g[REG_R13] = static_cast<greg_t>(regs.r13);
    g[REG_R12] = static_cast<greg_t>(regs.r12);
    g[REG_RBP] = static_cast<greg_t>(regs.bp);
    g[REG_RBX] = static_cast<greg_t>(regs.bx);
    g[REG_R11] = static_cast<greg_t>(regs.r11);
    g[REG_R10] = static_cast<greg_t>(regs.r10);
    g[REG_R9] = static_cast<greg_t>(regs.r9);
    g[REG_R8] = static_cast<greg_t>(regs.r8);
    g[REG_RAX] = static_cast<greg_t>(regs.ax);
    g[REG_RCX] = static_cast<greg_t>(regs.cx);
    g[REG_RDX] = static_cast<greg_t>(regs.dx);
    g[REG_RSI] = static_cast<greg_t>(regs.si);
    g[REG_RDI] = static_cast<greg_t>(regs.di);
    g[REG_RIP] = static_cast<greg_t>(regs.ip);
    g[REG_EFL] = static_cast<greg_t>(regs.flags);
    g[REG_RSP] = static_cast<greg_t>(regs.sp);
}


std::uint64_t ucontext_instruction_pointer(const void* ucontext) noexcept {
    return static_cast<std::uint64_t>(static_cast<const ucontext_t*>(ucontext)->uc_mcontext.gregs[REG_RIP]);
}

void set_ucontext_instruction_pointer(void* ucontext, std::uint64_t address) noexcept {
    static_cast<ucontext_t*>(ucontext)->uc_mcontext.gregs[REG_RIP] = static_cast<greg_t>(address);
}

VectorView vector_registers_of(const void* ucontext) noexcept {
    const auto* fpregs = static_cast<const ucontext_t*>(ucontext)->uc_mcontext.fpregs;
    if (fpregs == nullptr) return {};
    return {reinterpret_cast<const std::uint8_t*>(fpregs->_xmm), sizeof(fpregs->_xmm[0]), 16};
}

TrapKind classify_trap(const siginfo_t* info) noexcept {
    if (info->si_code == SI_KERNEL) return TrapKind::Breakpoint;
    if (info->si_code == TRAP_TRACE) return TrapKind::SingleStep;
    return TrapKind::Other;
}

std::uint64_t breakpoint_address(const pt_regs& regs) noexcept { return regs.ip - breakpoint_bytes.size(); }

int trap_number(int signal, const siginfo_t* info) noexcept {
    // The x86 exception vectors the kernel would have passed as trapnr.
    switch (signal) {
    case SIGFPE: return info->si_code == FPE_INTDIV || info->si_code == FPE_INTOVF ? 0 : 19;  // #DE, #XM
    case SIGILL: return 6;                                                                   // #UD
    case SIGBUS: return 17;                                                                  // #AC
    case SIGSEGV: return info->si_code == SI_KERNEL ? 13 : 14;                               // #GP, #PF
    case SIGTRAP: return 3;                                                                  // #BP
    default: return -1;
    }
}

bool emulate(const PreparedInsn& insn, pt_regs& regs, const Memory& memory) noexcept {
    x86::MemoryAccess access{memory.read, memory.write, memory.context};
    return x86::emulate(insn.probe, regs, access) == x86::EmulationStatus::Done;
}

bool can_use_trampolines() noexcept {
    static const bool supported = x86::cpu_supports_trampolines();
    return supported;
}

std::expected<OptimizedRegion, std::string> plan_optimization(std::span<const std::uint8_t> function_code,
                                                              std::uint64_t function_start, std::uint64_t address,
                                                              const PreparedInsn& probed, bool with_post_handler,
                                                              bool direct_callers) {
    auto check = x86::check_optimizable(function_code, function_start, address, &probed.probe.insn);
    if (!check.can_optimize())
        return std::unexpected(fmt::format("{}: {}", x86::describe(check.blocker), check.detail));
    // The post-handler call follows the first displaced instruction; a
    // branch there would skip it.
    if (with_post_handler && !check.region.insns.empty()) {
        const auto& first = check.region.insns.front();
        if (first.is_relative_branch() || first.info.meta.category == ZYDIS_CATEGORY_RET ||
            first.info.meta.category == ZYDIS_CATEGORY_UNCOND_BR)
            return std::unexpected(fmt::format("the first instruction ({}) branches, and a post-handler must run "
                                               "after it",
                                               x86::disassemble(first)));
    }
    OptimizedRegion plan;
    plan.region = std::move(check.region);
    plan.at_function_entry = address == function_start;
    plan.with_post_handler = with_post_handler;
    plan.direct_callers = direct_callers;
    auto offset = address - function_start;
    std::copy_n(function_code.begin() + static_cast<std::ptrdiff_t>(offset),
                std::min(plan.region.length, plan.original.size()), plan.original.begin());
    return plan;
}

std::vector<std::uint64_t> direct_branch_targets(std::span<const std::uint8_t> code, std::uint64_t start,
                                                 std::size_t scan_length, std::uint64_t lowest,
                                                 std::uint64_t highest) {
    return x86::direct_branch_targets(code, start, scan_length, lowest, highest);
}

std::uint64_t region_start(const OptimizedRegion& plan) noexcept { return plan.region.start; }
std::size_t region_length(const OptimizedRegion& plan) noexcept { return plan.region.length; }

Result<void> build_trampoline(OptimizedRegion& plan, std::uint64_t stub, const void* point,
                              std::span<std::uint8_t, slot_size> out) {
    // Saving only the argument registers at an entry is right only when no
    // caller can have kept its own values in other registers across the
    // call (plan_optimization).  Leaving out k0-7 and zmm16-31 in a function
    // without AVX-512 code is not proven the same way: a caller compiled for
    // AVX-512 in the same unit could keep values there.  That needs an
    // AVX-512 caller and -fipa-ra together; saving them for every directly
    // called function would cost every mid-function probe ~1 KiB of moves
    // on a machine where glibc's EVEX string functions keep them in use.
    auto built = x86::build_stub(
        plan.region, stub, point,
        plan.at_function_entry && !plan.direct_callers ? x86::BodyKind::Entry : x86::BodyKind::Middle,
        plan.with_post_handler, !plan.region.function_uses_avx512,
        plan.with_return_call ? stub_tag_return_call | (plan.direct_callers ? 0 : stub_tag_narrow_return) : 0, out,
        &plan.layout);
    if (!built) return std::unexpected(built.error());
    return {};
}

Result<std::array<std::uint8_t, optimized_jump_length>> optimized_jump(const OptimizedRegion& plan,
                                                                       std::uint64_t stub) {
    return x86::jump_to_stub(plan.region.start, stub);
}

bool is_in_trampoline_code(std::uint64_t pc) noexcept {
    // A thread in a landing call is on its way into a stub; one in a return
    // trampoline is in our code (the steps of a program single-stepping
    // itself are swallowed there).
    return x86::is_in_trampoline_body(pc) || is_in_return_trampoline(pc) || is_in_return_landings(pc);
}

std::uint64_t trampoline_original_address(const OptimizedRegion& plan, std::uint64_t pc) noexcept {
    const auto& layout = plan.layout;
    for (std::uint8_t i = 0; i < layout.count; ++i) {
        std::uint64_t copy = layout.stub + layout.copy_offset[i];
        if (pc >= copy && pc < copy + layout.copy_length[i]) return layout.original[i];
    }
    return 0;
}

std::uint64_t optimized_redirect_target(const OptimizedRegion& plan, std::uint64_t target) noexcept {
    const std::uint64_t start = plan.region.start;
    if (target <= start || target >= start + plan.region.length) return target;
    const auto& layout = plan.layout;
    for (std::uint8_t i = 0; i < layout.count; ++i)
        if (layout.original[i] == target) return layout.stub + layout.copy_offset[i];
    return 0;
}

std::uint64_t trampoline_step_address(const OptimizedRegion& plan, std::uint64_t pc) noexcept {
    // A step is reported after each displaced instruction completes: where
    // its copy ends, the original code would be at the next instruction.
    // Not after the last copy: the stub's jmp back then steps onto the real
    // next instruction, and that step is the program's own.
    const auto& layout = plan.layout;
    for (std::uint8_t i = 0; i + 1 < layout.count; ++i)
        if (pc == layout.stub + layout.copy_offset[i] + layout.copy_length[i])
            return layout.original[i] + layout.original_length[i];
    return 0;
}


}  // namespace ukp::arch
