/*
 * kretprobe_example.c: a kernel kretprobe module, written the way the
 * kernel's samples/kprobes are, run as a user-space program.  It measures
 * how long a function takes: the entry handler stores a timestamp in the
 * instance's data, the return handler prints the return value and the time.
 *
 * The only changes a kernel module needs are the ones marked PORT below.
 *
 * Usage: kretprobe_example [symbol]   (default: do_work, a function of this
 * program that main() calls a few times).
 */
#include <stdio.h>
#include <string.h>

#include <ukprobes/kprobes.h> /* PORT: was <linux/kernel.h>, <linux/module.h>, <linux/kprobes.h>, ... */

#ifndef noinline
#define noinline __attribute__((noinline))
#endif

static char func_name[KSYM_NAME_LEN] = "do_work";

/* Per-instance private data: the time the call started. */
struct my_data {
	ktime_t entry_stamp;
};

/* Runs at function entry: record when this call began. */
static int entry_handler(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct my_data *data;

	(void)regs;
	data = (struct my_data *)ri->data;
	data->entry_stamp = ktime_get();
	return 0;
}
NOKPROBE_SYMBOL(entry_handler)

/* Runs when the function returns: print what it returned and how long it took. */
static int ret_handler(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	unsigned long retval = regs_return_value(regs);
	struct my_data *data = (struct my_data *)ri->data;
	s64 delta;
	ktime_t now;

	now = ktime_get();
	delta = ktime_to_ns(ktime_sub(now, data->entry_stamp));
	pr_info("%s returned %lu and took %lld ns to execute\n",
		func_name, retval, (long long)delta);
	return 0;
}
NOKPROBE_SYMBOL(ret_handler)

static struct kretprobe my_kretprobe = {
	.handler = ret_handler,
	.entry_handler = entry_handler,
	.data_size = sizeof(struct my_data),
	/* Probe up to 20 instances concurrently. */
	.maxactive = 20,
};

/* The function this program probes by default. */
noinline unsigned long do_work(int rounds)
{
	volatile unsigned long total = 0;
	int i;

	for (i = 0; i < rounds; i++)
		total += i;
	return total;
}

static int kretprobe_init(void)
{
	int ret;

	my_kretprobe.kp.symbol_name = func_name;
	ret = register_kretprobe(&my_kretprobe);
	if (ret < 0) {
		pr_err("register_kretprobe failed, returned %d (%s)\n", ret,
		       ukprobes_last_error());
		return ret;
	}
	pr_info("Planted return probe at %s: %p\n",
		my_kretprobe.kp.symbol_name, (void *)my_kretprobe.kp.addr);
	return 0;
}

static void kretprobe_exit(void)
{
	unregister_kretprobe(&my_kretprobe);
	pr_info("kretprobe at %p unregistered\n", (void *)my_kretprobe.kp.addr);

	/* nmissed > 0 suggests that maxactive was set too low. */
	pr_info("Missed probing %d instances of %s.\n",
		my_kretprobe.nmissed, my_kretprobe.kp.symbol_name);
}

/* PORT: module_init(kretprobe_init) and module_exit(kretprobe_exit) become
 * the calls below, with the probed function called in between. */
int main(int argc, char **argv)
{
	int i;

	if (argc > 1) {
		strncpy(func_name, argv[1], sizeof(func_name) - 1);
		func_name[sizeof(func_name) - 1] = '\0';
	}
	if (kretprobe_init() < 0)
		return 1;
	for (i = 1; i <= 3; i++)
		pr_info("do_work(%d) = %lu\n", i * 10, do_work(i * 10));
	kretprobe_exit();
	return 0;
}
