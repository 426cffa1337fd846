# The two commands of the README, and a few more.  CMake does the real work.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build demo test test-sanitize bench install clean

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/examples/ukp_demo
	@echo; echo '== ukprobe: the sizes bash asks malloc for, and a few of its calls traced =='
	$(BUILD)/ukprobe run --hist size -e 'p libc.so.6:malloc size=%di:u64' -- bash -c 'for i in 1 2 3; do echo "hello from bash $$i"; done'
	$(BUILD)/ukprobe run -q -e 'p:getenv libc.so.6:getenv name=+0(%di):string' -e 'r:getenv_ret libc.so.6:getenv value=+0($$retval):string' -- date -u +%F

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The kernel-uprobe rows need tracefs.  As root without a mounted tracefs,
# mount one in a private mount namespace for this run only.
# UBSan over everything; ASan (with UBSan) over the pure layers only: ASan
# intercepts sigaction and the fault signals itself, which the engine must
# own, so the engine's tests run under UBSan alone.
SANITIZE_FLAGS = -DUKP_BUILD_BENCH=OFF -DCMAKE_CXX_FLAGS=-fno-sanitize-recover=undefined
test-sanitize: deps
	@cmake -S . -B $(BUILD)-ubsan -DUKP_SANITIZE=undefined $(SANITIZE_FLAGS) >/dev/null
	@cmake --build $(BUILD)-ubsan -j $(JOBS)
	cd $(BUILD)-ubsan && ctest --output-on-failure -j $(JOBS)
	@cmake -S . -B $(BUILD)-asan -DUKP_SANITIZE=address,undefined $(SANITIZE_FLAGS) >/dev/null
	@cmake --build $(BUILD)-asan -j $(JOBS) --target ukp_x86_tests ukp_elf_tests ukp_tracer_definition_tests ukp_tracer_output_tests ukp_tracer_common_tests
	$(BUILD)-asan/tests/ukp_x86_tests
	$(BUILD)-asan/tests/ukp_elf_tests
	$(BUILD)-asan/tests/ukp_tracer_definition_tests
	$(BUILD)-asan/tests/ukp_tracer_output_tests
	$(BUILD)-asan/tests/ukp_tracer_common_tests

bench: build
	@if [ ! -w /sys/kernel/tracing/uprobe_events ] && [ "$$(id -u)" = 0 ] && command -v unshare >/dev/null; then \
	  unshare -m sh -c 'mount -t tracefs nodev /sys/kernel/tracing && exec $(BUILD)/bench/ukp_bench --benchmark_min_time=0.2'; \
	else \
	  $(BUILD)/bench/ukp_bench --benchmark_min_time=0.2; \
	fi

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD)
