/* A program for ukprobe's end-to-end tests: each mode is one behaviour. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) int work(int a, const char *s)
{
	__asm__ volatile("" ::: "memory");
	return a + (int)strlen(s);
}

__attribute__((noinline)) long take_string(const char *s)
{
	__asm__ volatile("" ::: "memory");
	return s == NULL ? -1 : (long)s[0];
}

struct point {
	int x, y;
	const char *label;
};

__attribute__((noinline)) int take_point(const struct point *p)
{
	__asm__ volatile("" ::: "memory");
	return p->x * p->y;
}

struct types {
	unsigned char u8;      /* 0 */
	signed char s8;        /* 1 */
	unsigned short u16;    /* 2 */
	int s32;               /* 4 */
	unsigned long x64;     /* 8 */
	char letter;           /* 16 */
	unsigned int flags;    /* 20: bits 4..7 hold 0xa */
	const char *long_text; /* 24 */
	unsigned int numbers[3]; /* 32 */
	int (*callback)(int, const char *); /* 48 */
};

__attribute__((noinline)) int take_types(const struct types *t)
{
	__asm__ volatile("" ::: "memory");
	return t->s32;
}

static int calls_per_thread;

static void *thread_main(void *arg)
{
	long total = 0;
	for (int i = 0; i < calls_per_thread; i++)
		total += work(i, "thread");
	return (void *)total;
}

static int zlib_round_trip(void)
{
	void *libz = dlopen("libz.so.1", RTLD_NOW);
	if (libz == NULL) {
		printf("no libz\n");
		return 0;
	}
	int (*compress2)(unsigned char *, unsigned long *, const unsigned char *, unsigned long, int) =
		dlsym(libz, "compress2");
	int (*uncompress)(unsigned char *, unsigned long *, const unsigned char *, unsigned long) =
		dlsym(libz, "uncompress");
	char text[4096];
	for (int i = 0; i < (int)sizeof text; i++)
		text[i] = "ukprobes traces libz "[i % 21];
	unsigned char packed[8192], unpacked[8192];
	unsigned long packed_length = sizeof packed, unpacked_length = sizeof unpacked;
	int r1 = compress2(packed, &packed_length, (const unsigned char *)text, sizeof text, 6);
	int r2 = uncompress(unpacked, &unpacked_length, packed, packed_length);
	printf("zlib %d %d %lu->%lu %s\n", r1, r2, (unsigned long)sizeof text, packed_length,
	       unpacked_length == sizeof text && memcmp(text, unpacked, sizeof text) == 0 ? "same" : "DIFFERENT");
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "basic";
	if (strcmp(mode, "basic") == 0) {
		int total = 0;
		for (int i = 0; i < 5; i++)
			total += work(i, "hello");
		printf("total=%d\n", total);
		return 3;
	}
	if (strcmp(mode, "threads") == 0) {
		int threads = atoi(argv[2]);
		calls_per_thread = atoi(argv[3]);
		pthread_t ids[64];
		for (int t = 0; t < threads; t++)
			pthread_create(&ids[t], NULL, thread_main, NULL);
		long total = 0;
		for (int t = 0; t < threads; t++) {
			void *result;
			pthread_join(ids[t], &result);
			total += (long)result;
		}
		printf("total=%ld\n", total);
		return 0;
	}
	if (strcmp(mode, "zlib") == 0)
		return zlib_round_trip();
	/* reload PATH: a library loaded, called, unloaded, and again; a tracer
	 * must follow the reload. */
	if (strcmp(mode, "reload") == 0) {
		for (int round = 0; round < 2; round++) {
			void *library = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
			if (library == NULL) {
				printf("dlopen: %s\n", dlerror());
				return 1;
			}
			int (*target)(int) = (int (*)(int))dlsym(library, "unload_target");
			printf("unload_target(%d)=%d\n", round, target(round));
			dlclose(library);
		}
		return 0;
	}
	if (strcmp(mode, "wait") == 0) {
		work(1, "ready");
		printf("ready\n");
		fflush(stdout);
		char buffer[64];
		while (read(0, buffer, sizeof buffer) > 0)
			;
		return 0;
	}
	if (strcmp(mode, "env") == 0) {
		const char *preload = getenv("LD_PRELOAD");
		printf("LD_PRELOAD=%s\n", preload ? preload : "(unset)");
		printf("UKPROBE_SESSION_FD=%s\n", getenv("UKPROBE_SESSION_FD") ? "set" : "(unset)");
		printf("UKPROBE_ORIGINAL_LD_PRELOAD=%s\n", getenv("UKPROBE_ORIGINAL_LD_PRELOAD") ? "set" : "(unset)");
		return 0;
	}
	if (strcmp(mode, "pointers") == 0) {
		struct point p = {6, 7, "seven"};
		printf("%ld %ld %d\n", take_string("abc"), take_string(NULL), take_point(&p));
		return 0;
	}
	if (strcmp(mode, "types") == 0) {
		static char text[1000];
		memset(text, 'x', sizeof text - 1);
		struct types t = {200, -5, 65535, -123456, 0xdeadbeefcafeULL, 'Q', 0xa0, text, {1, 22, 333}, work};
		printf("%d\n", take_types(&t));
		return 0;
	}
	if (strcmp(mode, "fork") == 0) {
		pid_t child = fork();
		if (child == 0) {
			work(10, "child");
			work(11, "child");
			_exit(0);
		}
		waitpid(child, NULL, 0);
		work(20, "parent");
		return 0;
	}
	if (strcmp(mode, "signal") == 0) {
		work(1, "dying");
		fflush(stdout);
		signal(SIGUSR2, SIG_DFL);
		raise(SIGUSR2);
		return 0;
	}
	fprintf(stderr, "unknown mode %s\n", mode);
	return 2;
}
