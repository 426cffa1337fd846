/*
 * c_api_errors.c: the C API returns the kernel's errno for each cause.
 *
 * The probed function is written in assembly so that its instruction
 * boundaries are known exactly; offsets below name them:
 *
 *   do_work+0   f3 0f 1e fa   endbr64
 *   do_work+4   55            push %rbp
 *   do_work+5   48 89 e5      mov  %rsp,%rbp
 *   do_work+8   8d 47 01      lea  0x1(%rdi),%eax
 *   do_work+11  5d            pop  %rbp
 *   do_work+12  c3            ret
 *
 * Each check prints one line, "ok" or "FAIL"; the exit status is the number
 * of failures (0 when all pass).
 */
#include <stdio.h>
#include <string.h>

#include <ukprobes/kprobes.h>

int do_work(int value);
__asm__(".text\n"
	".globl do_work\n"
	".type do_work, @function\n"
	"do_work:\n"
	"	endbr64\n"
	"	push %rbp\n"
	"	mov %rsp, %rbp\n"
	"	lea 1(%rdi), %eax\n"
	"	pop %rbp\n"
	"	ret\n"
	".size do_work, .-do_work\n");

static int failures;

static void check(int passed, const char *what)
{
	printf("%-4s %s\n", passed ? "ok" : "FAIL", what);
	if (!passed) {
		printf("     last error: %s\n", ukprobes_last_error());
		failures++;
	}
}

static void check_errno(int got, int expected, const char *what)
{
	char line[256];

	snprintf(line, sizeof(line), "%s: got %d (%s), want %d (%s)", what, got,
		 got < 0 ? strerror(-got) : "success", -expected, strerror(expected));
	check(got == -expected, line);
}

static int empty_pre(struct kprobe *p, struct pt_regs *regs)
{
	(void)p;
	(void)regs;
	return 0;
}

static void unknown_symbol_is_enoent(void)
{
	struct kprobe kp = { .symbol_name = "ukprobes_no_such_function", .pre_handler = empty_pre };

	check_errno(register_kprobe(&kp), ENOENT, "unknown symbol");
}

static void offset_inside_instruction_is_eilseq(void)
{
	struct kprobe kp = { .symbol_name = "do_work", .offset = 1, .pre_handler = empty_pre };

	check_errno(register_kprobe(&kp), EILSEQ, "do_work+1, inside endbr64");
}

static void offset_on_boundary_is_accepted(void)
{
	struct kprobe kp = { .symbol_name = "do_work", .offset = 4, .pre_handler = empty_pre };
	int ret = register_kprobe(&kp);

	check_errno(ret, 0, "do_work+4, push %rbp");
	if (ret == 0) {
		check(do_work(41) == 42, "do_work(41) = 42 through the probe");
		check(kprobe_nhit(&kp) == 1, "do_work+4 hit once");
		unregister_kprobe(&kp);
	}
}

static void registering_twice_is_eexist(void)
{
	struct kprobe kp = { .symbol_name = "do_work", .pre_handler = empty_pre };
	int ret = register_kprobe(&kp);

	check_errno(ret, 0, "first registration");
	check_errno(register_kprobe(&kp), EEXIST, "same struct kprobe again");
	if (ret == 0)
		unregister_kprobe(&kp);
}

static void address_and_symbol_is_einval(void)
{
	struct kprobe kp = { .addr = (kprobe_opcode_t *)do_work, .symbol_name = "do_work",
			     .pre_handler = empty_pre };

	check_errno(register_kprobe(&kp), EINVAL, "both addr and symbol_name");
}

static void batch_with_bad_last_entry_registers_none(void)
{
	struct kprobe first = { .symbol_name = "do_work", .pre_handler = empty_pre };
	struct kprobe second = { .symbol_name = "do_work", .offset = 4, .pre_handler = empty_pre };
	struct kprobe bad = { .symbol_name = "ukprobes_no_such_function", .pre_handler = empty_pre };
	struct kprobe *batch[] = { &first, &second, &bad };

	check_errno(register_kprobes(batch, 3), ENOENT, "register_kprobes with a bad last entry");
	check(do_work(1) == 2, "do_work(1) = 2 after the failed batch");
	check(kprobe_nhit(&first) == 0 && kprobe_nhit(&second) == 0,
	      "the good entries of the failed batch are not armed (no hits)");

	/* Nothing was left half-registered: the same structs register again. */
	batch[2] = NULL;
	check_errno(register_kprobes(batch, 2), 0, "the good entries alone");
	do_work(1);
	check(kprobe_nhit(&first) == 1 && kprobe_nhit(&second) == 1, "each good entry hit once");
	unregister_kprobes(batch, 2);
}

static void disabled_probe_is_not_hit(void)
{
	struct kprobe kp = { .symbol_name = "do_work", .pre_handler = empty_pre };

	check_errno(register_kprobe(&kp), 0, "register for enable/disable");
	do_work(1);
	check(kprobe_nhit(&kp) == 1, "enabled: one hit");

	check_errno(disable_kprobe(&kp), 0, "disable_kprobe");
	check(kprobe_disabled(&kp), "kprobe_disabled() after disable_kprobe");
	check(do_work(2) == 3, "do_work(2) = 3 while disabled");
	check(kprobe_nhit(&kp) == 1, "disabled: no hit");

	check_errno(enable_kprobe(&kp), 0, "enable_kprobe");
	check(!kprobe_disabled(&kp), "!kprobe_disabled() after enable_kprobe");
	do_work(3);
	check(kprobe_nhit(&kp) == 2, "enabled again: second hit");
	check(kp.nmissed == 0, "nmissed stays 0");
	unregister_kprobe(&kp);
}

int main(void)
{
	unknown_symbol_is_enoent();
	offset_inside_instruction_is_eilseq();
	offset_on_boundary_is_accepted();
	registering_twice_is_eexist();
	address_and_symbol_is_einval();
	batch_with_bad_last_entry_registers_none();
	disabled_probe_is_not_hit();
	printf("%d failure(s)\n", failures);
	return failures == 0 ? 0 : 1;
}
