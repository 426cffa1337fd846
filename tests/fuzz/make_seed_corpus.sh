#!/usr/bin/env bash
# Turns every definition in the golden file into one seed file for the
# fuzzer.  Usage: make_seed_corpus.sh GOLDEN_TXT OUTPUT_DIR
# Lines are "ok EVENT | DEFINITION" or "error MESSAGE | DEFINITION-WITH-^";
# the first '^' of an error line marks the caret and is dropped.
set -euo pipefail
golden=$1
out=$2
mkdir -p "$out"
n=0
while IFS= read -r line || [ -n "$line" ]; do
  case $line in
    ok\ *\|\ *) definition=${line#* | } ;;
    error\ *\|\ *) definition=${line#* | }; definition=${definition/^/} ;;
    *) continue ;;
  esac
  n=$((n + 1))
  printf '%s' "$definition" > "$out/golden-$n"
done < "$golden"
echo "$n"
