#!/usr/bin/env bash
# Builds the definition fuzzer with clang's libFuzzer, ASan and UBSan, seeds
# it with the golden file's definitions and runs it for a bounded time.
# Usage: run_definition_fuzzer.sh SOURCE_DIR WORK_DIR [SECONDS]
# Exit 77 (ctest SKIP_RETURN_CODE) with the reason when clang++ or its
# libFuzzer runtime is missing: a missing tool must not look like a pass.
set -uo pipefail
src=$1
work=$2
seconds=${3:-20}
skip=77

cxx=${UKP_FUZZ_CXX:-}
if [ -z "$cxx" ]; then
  for candidate in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if command -v "$candidate" >/dev/null 2>&1; then cxx=$candidate; break; fi
  done
fi
if [ -z "$cxx" ]; then
  echo "SKIP: clang++ not found (scripts/install-deps.sh installs clang and libclang-rt-14-dev)"
  exit $skip
fi

mkdir -p "$work" || exit 1
probe_dir=$(mktemp -d "$work/probe.XXXXXX") || exit 1
trap 'rm -rf "$probe_dir"' EXIT

# 1. libFuzzer's runtime must link.
cat > "$probe_dir/fuzz.cpp" <<'PROBE'
#include <cstddef>
#include <cstdint>
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }
PROBE
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe_dir/fuzz.cpp" -o "$probe_dir/fuzz" 2>"$probe_dir/log"; then
  echo "SKIP: $cxx cannot link -fsanitize=fuzzer (install libclang-rt-NN-dev):"
  cat "$probe_dir/log"
  exit $skip
fi

# 2. std::expected: libstdc++ 12's is empty under clang < 16; use the shim.
compat=()
cat > "$probe_dir/expected.cpp" <<'PROBE'
#include <expected>
std::expected<int, int> probe() { return 1; }
PROBE
if ! "$cxx" -std=c++2b -fsyntax-only "$probe_dir/expected.cpp" 2>/dev/null; then
  echo "note: $cxx has no usable std::expected; using tests/fuzz/compat/expected"
  compat=(-isystem "$src/tests/fuzz/compat")
fi

# 3. Build against the parser's sources exactly as the library has them.
binary=$work/definition_fuzzer
echo "building $binary with $cxx"
if ! "$cxx" -std=c++2b -O1 -g -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Werror "${compat[@]}" -I"$src/include" -I"$src/src" \
    "$src"/src/tracer/definition/*.cpp "$src/tests/fuzz/definition_fuzzer.cpp" \
    -lfmt -o "$binary"; then
  echo "FAIL: the fuzzer does not build"
  exit 1
fi

# 4. Seeds: every definition of the golden file.
corpus=$work/corpus
seeds=$("$src/tests/fuzz/make_seed_corpus.sh" "$src/tests/unit/tracer_definition/golden.txt" "$corpus") || exit 1
echo "seeded $corpus with $seeds golden definitions"

# 5. Run, bounded in time and per input; any crash, leak, UB report,
#    timeout or failed invariant fails the test.
cd "$work" || exit 1
"$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=2048 \
  -dict="$src/tests/fuzz/definition.dict" -print_final_stats=1 "$corpus"
