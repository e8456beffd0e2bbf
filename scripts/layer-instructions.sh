#!/usr/bin/env bash
# Instructions and atomic operations per call of every stack `layer_cost` knows, GET and PATCH,
# counted under callgrind (valgrind, `--collect-bus`): figures the machine's load does not move.
# Each figure is (count at 3N calls - count at N calls) / 2N, so that start-up and warm-up cancel
# out. Atomic operations are the ones that cost when two cores share the stack: each moves a
# cache line that every call writes.
#
#   cargo build --release -p benches --bin layer_cost
#   scripts/layer-instructions.sh [N]        # N defaults to 1000
#
# Prints a markdown table: the instructions per call, what the stack adds over the in-memory
# service alone ("raw"), and the atomic operations per call.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
bin=target/release/layer_cost
command -v valgrind > /dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 2; }
[ -x "$bin" ] || { echo "build it first: cargo build --release -p benches --bin layer_cost" >&2; exit 2; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
count() { # stack calls method -> "instructions atomics" of the whole process
  valgrind --tool=callgrind --collect-bus=yes --callgrind-out-file="$out" "$bin" "$1" "$2" "$3" \
    > /dev/null 2>&1
  awk '/^summary:/ { print $2, $3 }' "$out"
}
per_call() { # stack method -> "instructions atomics" per call
  local a b
  a=($(count "$1" "$n" "$2"))
  b=($(count "$1" $((3 * n)) "$2"))
  echo $(((b[0] - a[0]) / (2 * n))) $(((b[1] - a[1]) / (2 * n)))
}

# The list of stacks, from the binary's usage text (it exits 2 on purpose).
stacks=$({ "$bin" 2>&1 || true; } | sed -n 's/^STACK: //p' | tr -d ',')
raw_get=($(per_call raw get))
raw_patch=($(per_call raw patch))
echo "| stack | GET | added | atomics | PATCH | added | atomics |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for s in $stacks; do
  g=($(per_call "$s" get))
  p=($(per_call "$s" patch))
  echo "| $s | ${g[0]} | $((g[0] - raw_get[0])) | ${g[1]} | ${p[0]} | $((p[0] - raw_patch[0])) | ${p[1]} |"
done
