#!/usr/bin/env bash
# Instructions per call of every stack `layer_cost` knows, GET and PATCH, counted under
# cachegrind (valgrind): a figure the machine's load does not move. Each figure is
# (count at 3N calls - count at N calls) / 2N, so that start-up and warm-up cancel out.
#
#   cargo build --release -p benches --bin layer_cost
#   scripts/layer-instructions.sh [N]        # N defaults to 1000
#
# Prints a markdown table: the instructions per call, and what the stack adds over the
# in-memory service alone ("raw").
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
bin=target/release/layer_cost
command -v valgrind > /dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 2; }
[ -x "$bin" ] || { echo "build it first: cargo build --release -p benches --bin layer_cost" >&2; exit 2; }

count() { # stack calls method -> instructions of the whole process
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$bin" "$1" "$2" "$3" 2>&1 \
    | awk '/I *refs:/ { gsub(",", "", $NF); print $NF }'
}
per_call() { # stack method
  local a b
  a=$(count "$1" "$n" "$2")
  b=$(count "$1" $((3 * n)) "$2")
  echo $(((b - a) / (2 * n)))
}

# The list of stacks, from the binary's usage text (it exits 2 on purpose).
stacks=$({ "$bin" 2>&1 || true; } | sed -n 's/^STACK: //p' | tr -d ',')
raw_get=$(per_call raw get)
raw_patch=$(per_call raw patch)
echo "| stack | GET | added | PATCH | added |"
echo "| --- | --- | --- | --- | --- |"
for s in $stacks; do
  if [ "$s" = raw ]; then g=$raw_get; p=$raw_patch; else g=$(per_call "$s" get); p=$(per_call "$s" patch); fi
  echo "| $s | $g | $((g - raw_get)) | $p | $((p - raw_patch)) |"
done
