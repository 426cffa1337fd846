/* Built against an installed ukprobes: probes a function of its own through
 * the C API and exits 0 only if the handler saw the call. */
#include <stdio.h>

#include <ukprobes/kprobes.h>

static unsigned long seen_argument;

__attribute__((noinline)) int add_one(int value)
{
	return value + 1;
}

static int record_argument(struct kprobe *p, struct pt_regs *regs)
{
	(void)p;
	seen_argument = regs->di;
	return 0;
}

int main(void)
{
	struct kprobe kp = { .addr = (kprobe_opcode_t *)add_one, .pre_handler = record_argument };
	int ret = register_kprobe(&kp);
	int result;

	if (ret < 0) {
		printf("C: register_kprobe: %d (%s)\n", ret, ukprobes_last_error());
		return 1;
	}
	result = add_one(41);
	printf("C: add_one(41) = %d, handler saw %lu, hits = %lu\n", result, seen_argument, kprobe_nhit(&kp));
	unregister_kprobe(&kp);
	return result == 42 && seen_argument == 41 && kprobe_nhit(&kp) == 1 ? 0 : 1;
}
