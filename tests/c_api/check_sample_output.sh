#!/usr/bin/env bash
# Runs kprobe_example with a symbol and checks the lines a kernel kprobe
# module prints: the planting message, one pre-handler line (with ip) and one
# post-handler line (without), both naming the symbol.
set -u
binary=$1
symbol=$2

output=$("$binary" "$symbol" 2>&1)
status=$?
printf '%s\n' "$output"

failed=0
expect() {
    local pattern=$1 what=$2
    if ! grep -Eq -- "$pattern" <<<"$output"; then
        echo "FAIL: no $what line (pattern: $pattern)"
        failed=1
    fi
}
if [ "$status" -ne 0 ]; then
    echo "FAIL: $binary $symbol exited with $status"
    failed=1
fi
expect '^Planted kprobe at 0x[0-9a-f]+$' "'Planted kprobe at'"
expect "^<$symbol> p->addr = 0x0x[0-9a-f]+, ip = [0-9a-f]+, flags = 0x[0-9a-f]+$" "pre-handler"
expect "^<$symbol> p->addr = 0x0x[0-9a-f]+, flags = 0x[0-9a-f]+$" "post-handler"
exit $failed
