/*
 * struct pt_regs: the register file a probe handler sees and may change.
 *
 * The field names and their order are the Linux kernel's x86-64 pt_regs, so
 * handlers written for kernel kprobes (regs->di, regs->ip, regs->flags ...)
 * compile unchanged.  The same struct is the C++ API's ukp::Regs.  Assembly
 * that fills it (trampolines) is tied to this layout with offsetof and
 * static_assert in src/arch/x86_64, never with hand-counted offsets.
 */
#ifndef UKPROBES_PT_REGS_H
#define UKPROBES_PT_REGS_H

#ifdef __cplusplus
extern "C" {
#endif

#if !defined(__x86_64__)
#error "ukprobes supports x86-64 only for now"
#endif

struct pt_regs {
	unsigned long r15;
	unsigned long r14;
	unsigned long r13;
	unsigned long r12;
	unsigned long bp;
	unsigned long bx;
	unsigned long r11;
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long ax;
	unsigned long cx;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	/* The syscall number on kernel entry; here: ~0UL, kept for layout. */
	unsigned long orig_ax;
	unsigned long ip;
	unsigned long cs;
	unsigned long flags;
	unsigned long sp;
	unsigned long ss;
};

/* The value a function returns, valid in a return handler or a post-handler
 * placed after the return. */
static inline unsigned long regs_return_value(const struct pt_regs *regs)
{
	return regs->ax;
}

/* The N-th integer/pointer argument (0-based) by the System V ABI, valid at a
 * function's first instruction.  Arguments past the sixth live on the stack,
 * above the return address. */
static inline unsigned long regs_get_kernel_argument(const struct pt_regs *regs,
						     unsigned int n)
{
	switch (n) {
	case 0: return regs->di;
	case 1: return regs->si;
	case 2: return regs->dx;
	case 3: return regs->cx;
	case 4: return regs->r8;
	case 5: return regs->r9;
	default: return ((const unsigned long *)regs->sp)[n - 5];
	}
}

#ifdef __cplusplus
}
#endif

#endif /* UKPROBES_PT_REGS_H */
