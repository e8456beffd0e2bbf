#!/usr/bin/env bash
# Instructions per request on loopback, counted under callgrind: what each client adds over the
# leaf alone (hyper-util's client, its body mapped and the whole erased, the bearer header on
# the wire), a figure the machine's load does not move. Every run is `loopback_interleaved`
# with the leaf and one client only (raw as well, which the binary always runs), one round of
# 30,000 requests at 32 in flight after its warm-up, server and clients on one thread
# (`--one-thread`: on two, the counts move by hundreds of instructions a request from run to
# run, with the order valgrind happens to run the threads in); the runs differ in one client
# only, so the difference of two totals over the requests is what that client adds over the
# leaf.
#
#   cargo build --release -p benches --bin loopback_interleaved
#   scripts/loopback-instructions.sh [CLIENT ...]   # default: tower's own stack, this stack
#
# Counted in user space only: the kernel's share (the sockets) is not in the count; what two
# cores cost each other (shared cache lines) is not either; and valgrind runs about fifty times
# slower than the machine, which changes what time-driven code does (the pacer, which takes its
# starts in batches only for a thread that starts several times a millisecond, takes them one
# by one here). Takes a minute or two a client.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/loopback_interleaved
command -v valgrind > /dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 2; }
[ -x "$bin" ] || { echo "build it first: cargo build --release -p benches --bin loopback_interleaved" >&2; exit 2; }
[ $# -gt 0 ] || set -- "tower's own stack" "genesys-tower stack"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The requests each client makes: the warm-up's quarter round and one round, at 32 in flight.
requests=$((30000 / 4 + 30000))
total() { # client -> instructions of the whole process (raw and that client)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --ablation --only "$1" \
    --in-flight 32 --rounds 1 --one-thread > /dev/null 2>&1
  awk '/^summary:/ { print $2 }' "$out"
}
leaf=$(total "the leaf alone, with the header")
echo "| client | instructions per request over the leaf alone |"
echo "| --- | --- |"
for c in "$@"; do
  echo "| $c | $((($(total "$c") - leaf) / requests)) |"
done
