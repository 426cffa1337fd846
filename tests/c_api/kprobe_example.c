/*
 * kprobe_example.c: a kernel kprobe module, written the way the kernel's
 * samples/kprobes are, run as a user-space program.
 *
 * The only changes a kernel module needs are the ones marked PORT below:
 * the include, and main() calling the init and exit functions where the
 * kernel would call them at insmod and rmmod time.  Everything else (struct
 * kprobe, register_kprobe, pr_info, __kprobes, KSYM_NAME_LEN, CONFIG_X86)
 * comes from <ukprobes/kprobes.h>.
 *
 * Usage: kprobe_example [symbol]   (default: do_work, a function of this
 * program; "getpid" probes libc's getpid and the program calls it.)
 *
 * The handlers print from inside the SIGTRAP handler, as the kernel sample
 * prints from its trap handler.  That is fine here because main() is not
 * inside stdio when it calls the probed function; a real program should
 * record into variables and print later.
 */
#define _POSIX_C_SOURCE 200809L /* PORT: getpid() under -std=c11 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <ukprobes/kprobes.h> /* PORT: was <linux/kernel.h>, <linux/module.h>, <linux/kprobes.h> */

#ifndef noinline
#define noinline __attribute__((noinline))
#endif

static char symbol[KSYM_NAME_LEN] = "do_work";

/* One probe, placed by name: register_kprobe looks the symbol up. */
static struct kprobe kp = {
	.symbol_name = symbol,
};

/* The function this program probes by default.  noinline and the volatile
 * accumulator keep the call and the body from being optimised away. */
noinline int do_work(int rounds)
{
	volatile int total = 0;
	int i;

	for (i = 0; i < rounds; i++)
		total += i;
	return total;
}

/* Runs just before the probed instruction executes. */
static int __kprobes handler_pre(struct kprobe *p, struct pt_regs *regs)
{
#ifdef CONFIG_X86
	pr_info("<%s> p->addr = 0x%p, ip = %lx, flags = 0x%lx\n",
		p->symbol_name, p->addr, regs->ip, regs->flags);
#endif
	/* 0: let the probed instruction run. */
	return 0;
}

/* Runs after the probed instruction has executed out of line. */
static void __kprobes handler_post(struct kprobe *p, struct pt_regs *regs,
				unsigned long flags)
{
	(void)flags;
#ifdef CONFIG_X86
	pr_info("<%s> p->addr = 0x%p, flags = 0x%lx\n",
		p->symbol_name, p->addr, regs->flags);
#endif
}

static int kprobe_init(void)
{
	int ret;

	kp.pre_handler = handler_pre;
	kp.post_handler = handler_post;

	ret = register_kprobe(&kp);
	if (ret < 0) {
		pr_err("register_kprobe failed, returned %d (%s)\n", ret,
		       ukprobes_last_error());
		return ret;
	}
	pr_info("Planted kprobe at %p\n", kp.addr);
	return 0;
}

static void kprobe_exit(void)
{
	unregister_kprobe(&kp);
	pr_info("kprobe at %p unregistered\n", kp.addr);
}

/* PORT: module_init(kprobe_init) and module_exit(kprobe_exit) become the
 * calls below, with the probed code run in between. */
int main(int argc, char **argv)
{
	int ret;

	if (argc > 1) {
		strncpy(symbol, argv[1], sizeof(symbol) - 1);
		symbol[sizeof(symbol) - 1] = '\0';
	}
	ret = kprobe_init();
	if (ret < 0)
		return 1;

	if (strcmp(symbol, "getpid") == 0)
		pr_info("getpid() = %ld\n", (long)getpid());
	else
		pr_info("do_work(10) = %d\n", do_work(10));

	kprobe_exit();
	return 0;
}
