/*
 * <ukprobes/kprobes.h>: the kernel's kprobes API for user-space programs.
 *
 * Names, types and return values are the kernel's (include/linux/kprobes.h),
 * so a kernel kprobe module ports to a user-space program by changing its
 * includes and turning module_init/module_exit into calls from main().
 * Functions return 0 or a negative errno, as the kernel's do:
 *   -EINVAL        malformed probe, blacklisted or unprobeable instruction,
 *                  address not executable
 *   -EILSEQ        address inside an instruction, or undecodable bytes
 *   -ENOENT        unknown symbol or module
 *   -EADDRNOTAVAIL several symbols match the name
 *   -EEXIST        this struct kprobe is registered already
 *   -ERANGE        no out-of-line memory within +-2 GiB
 *   -ENOMEM, -EIO  resources, system call failures
 * The reason behind the last error of the calling thread, in words:
 * ukprobes_last_error().
 */
#ifndef UKPROBES_KPROBES_H
#define UKPROBES_KPROBES_H

#include <errno.h>
#include <stddef.h>
#include <stdio.h>

#include "ukprobes/pt_regs.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef unsigned char kprobe_opcode_t;

struct kprobe;
typedef int (*kprobe_pre_handler_t)(struct kprobe *, struct pt_regs *);
typedef void (*kprobe_post_handler_t)(struct kprobe *, struct pt_regs *, unsigned long flags);
typedef int (*kprobe_fault_handler_t)(struct kprobe *, struct pt_regs *, int trapnr);

#define KPROBE_FLAG_GONE	1	/* never set here: modules are not unloaded under a probe */
#define KPROBE_FLAG_DISABLED	2	/* registered but not armed */
#define UKP_NO_OPTIMIZE		0x100	/* keep this probe on the int3 path */

struct kprobe {
	/* Where: addr, or symbol_name ("name" or "module:name"), plus offset. */
	kprobe_opcode_t *addr;
	const char *symbol_name;
	unsigned int offset;

	kprobe_pre_handler_t pre_handler;
	kprobe_post_handler_t post_handler;
	/* Removed from the kernel in 5.14; kept here because a user-space
	 * handler can fault and recover.  Returns non-zero if it fixed the fault. */
	kprobe_fault_handler_t fault_handler;

	/* The instruction's first original byte, as in the kernel. */
	kprobe_opcode_t opcode;
	unsigned int flags;
	/* Hits skipped because a handler was already running on the thread. */
	unsigned long nmissed;

	void *ukprobes_private;	/* the engine's; zero-initialise it */
};

int register_kprobe(struct kprobe *p);
void unregister_kprobe(struct kprobe *p);
int register_kprobes(struct kprobe **kps, int num);
void unregister_kprobes(struct kprobe **kps, int num);
int enable_kprobe(struct kprobe *kp);
int disable_kprobe(struct kprobe *kp);

/* Hits that ran this probe's handlers (the kernel shows these in
 * kprobe_profile rather than in struct kprobe). */
unsigned long kprobe_nhit(const struct kprobe *p);
/* Why the last call of this thread failed: "symbol 'foo' not found ..." */
const char *ukprobes_last_error(void);
/* Reads of memory that may not be mapped, safe in handlers (the kernel's
 * names and return values).  0, or -EFAULT when any byte was unreadable. */
long copy_from_user_nofault(void *dst, const void *src, size_t size);
/* Copies a string and terminates it: its length including the NUL, `count`
 * when it was truncated to count - 1 bytes, -EFAULT on a bad address. */
long strncpy_from_user_nofault(char *dst, const void *unsafe_addr, long count);
/* Never probe [start, end) (NOKPROBE_SYMBOL for ranges). */
void ukprobes_blacklist_range(unsigned long start, unsigned long end);
/* Never probe the whole function that holds `address` (its ELF symbol's size
 * bounds it; resolved when probes are placed). */
void ukprobes_blacklist_function(unsigned long address);

/*
 * Return probes.  kp names a function's entry (offset 0); its pre_handler is
 * set by register_kretprobe.  maxactive: the most calls of the function per
 * thread whose return is watched at once (recursion depth), <= 0 for 64;
 * calls beyond it count in nmissed.  data_size bytes of ri->data (16-byte
 * aligned) belong to one call, from entry_handler to handler.  Calls left
 * by longjmp, a C++ exception or pthread_exit run no handler and count in
 * kretprobe_nabandoned().  After unregister_kretprobe, pending calls still
 * return correctly and no handler runs.
 */
struct kretprobe_instance;
typedef int (*kretprobe_handler_t)(struct kretprobe_instance *, struct pt_regs *);

struct kretprobe {
	struct kprobe kp;
	kretprobe_handler_t handler;
	kretprobe_handler_t entry_handler;
	int maxactive;
	int nmissed;
	size_t data_size;

	void *ukprobes_private;	/* the engine's; zero-initialise it */
};

struct kretprobe_instance {
	struct kretprobe *rp;		/* valid while the probe is registered */
	kprobe_opcode_t *ret_addr;	/* where the function returns to */
	void *fp;			/* where its return address is stored */
	void *ukprobes_private[5];
	char data[];
};

int register_kretprobe(struct kretprobe *rp);
void unregister_kretprobe(struct kretprobe *rp);
int register_kretprobes(struct kretprobe **rps, int num);
void unregister_kretprobes(struct kretprobe **rps, int num);
/* Watched calls left without returning (longjmp, exception, pthread_exit). */
unsigned long kretprobe_nabandoned(const struct kretprobe *rp);

static inline struct kretprobe *get_kretprobe(struct kretprobe_instance *ri)
{
	return ri->rp;
}

/* The kernel's monotonic clock, in nanoseconds (ktime_get). */
typedef long long s64;
typedef s64 ktime_t;
long long ukprobes_ktime_get_ns(void);
static inline ktime_t ktime_get(void) { return ukprobes_ktime_get_ns(); }
static inline ktime_t ktime_sub(ktime_t a, ktime_t b) { return a - b; }
static inline s64 ktime_to_ns(ktime_t kt) { return kt; }

static inline int kprobe_disabled(const struct kprobe *p)
{
	return (p->flags & KPROBE_FLAG_DISABLED) != 0;
}

/* Kernel-isms kprobe modules use, so that their code compiles unchanged. */
#ifndef __kprobes
#define __kprobes
#endif
#ifndef KSYM_NAME_LEN
#define KSYM_NAME_LEN 512
#endif
#ifndef pr_fmt
#define pr_fmt(fmt) fmt
#endif
#define pr_info(fmt, ...) fprintf(stdout, pr_fmt(fmt), ##__VA_ARGS__)
#define pr_err(fmt, ...) fprintf(stderr, pr_fmt(fmt), ##__VA_ARGS__)
#define pr_warn(fmt, ...) fprintf(stderr, pr_fmt(fmt), ##__VA_ARGS__)
#define pr_debug(fmt, ...) do { if (0) fprintf(stderr, pr_fmt(fmt), ##__VA_ARGS__); } while (0)
/* Blacklists a function of the program for probes. */
#define NOKPROBE_SYMBOL(fname)                                                           \
	__attribute__((constructor)) static void ukprobes_nokprobe_##fname(void)         \
	{                                                                                \
		ukprobes_blacklist_function((unsigned long)(fname));                          \
	}
#if defined(__x86_64__) && !defined(CONFIG_X86)
#define CONFIG_X86 1
#endif

#ifdef __cplusplus
}
#endif

#endif /* UKPROBES_KPROBES_H */
