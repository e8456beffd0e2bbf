#!/usr/bin/env bash
# Where two clients' CPU goes on loopback, symbol by symbol, in real time: each client runs
# under `perf record` (the cpu-clock software event, which works where hardware counters do
# not) in its own run of `loopback_interleaved --only CLIENT`, raw hyper-util interleaved with
# it in both runs, and the CPU time per request of every symbol is compared.
#
#   cargo build --release -p benches --bin loopback_interleaved
#   scripts/profile-diff.sh ["CLIENT A"] ["CLIENT B"] [IN_FLIGHT] [ROUNDS]
#
# Defaults: "tower's own stack", "genesys-tower stack", 32 in flight, 12 rounds. Prints a
# markdown table of the symbols whose time per request differs most (B minus A, in ns per
# request of the client: its own code and what it makes hyper, the kernel and the allocator do),
# with the context switches per request of each run. Samples are at 4999 Hz: a symbol below
# about 20 ns per request is noise.
set -euo pipefail
cd "$(dirname "$0")/.."
a=${1:-"tower's own stack"}
b=${2:-"genesys-tower stack"}
in_flight=${3:-32}
rounds=${4:-12}
bin=target/release/loopback_interleaved
hz=4999
command -v perf > /dev/null || { echo "perf is needed (Debian: apt-get install linux-perf)" >&2; exit 2; }
[ -x "$bin" ] || { echo "build it first: cargo build --release -p benches --bin loopback_interleaved" >&2; exit 2; }
case $in_flight in
  1) per_round=10000 ;;
  32) per_round=30000 ;;
  *) echo "IN_FLIGHT is 1 or 32" >&2; exit 2 ;;
esac

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
profile() { # name client -> $dir/name.txt (symbols with their samples), $dir/name.cs
  perf record -q -F "$hz" -o "$dir/$1.data" -- \
    perf stat -x, -e context-switches -o "$dir/$1.cs" \
    "$bin" --only "$2" --in-flight "$in_flight" --rounds "$rounds" > "$dir/$1.out"
  perf report -i "$dir/$1.data" --no-children --sort symbol -g none --show-nr-samples \
    2> /dev/null > "$dir/$1.txt"
}
profile a "$a"
profile b "$b"
grep -h "^| \(raw\|$a\|$b\)" "$dir/a.out" "$dir/b.out" || true
echo
python3 - "$dir" "$a" "$b" "$hz" $((rounds * per_round)) <<'EOF'
import re, sys
d, a, b, hz, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def symbols(name):
    out = {}
    for line in open(f"{d}/{name}.txt"):
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+\[(.)\]\s+(.*?)\s*$", line)
        if m:
            key = ("kernel: " if m.group(2) == "k" else "") + re.split(r"\s{2,}", m.group(3).strip())[0][:110]
            out[key] = out.get(key, 0) + int(m.group(1))
    return out

def switches(name):
    for line in open(f"{d}/{name}.cs"):
        if "context-switches" in line:
            return int(line.split(",")[0])
    return 0

# Each run made n requests of raw hyper-util and n of its client: a symbol's samples over the
# sampling rate, per request of the client, in ns.
ns = lambda samples: samples * 1e9 / hz / n
sa, sb = symbols("a"), symbols("b")
total_a, total_b = sum(sa.values()), sum(sb.values())
print(f"CPU per pair of requests (raw's and the client's): {a} {ns(total_a):.0f} ns, "
      f"{b} {ns(total_b):.0f} ns ({ns(total_b - total_a):+.0f} ns)")
print(f"context switches per request (both clients of a run): {a} {switches('a') / (2 * n):.3f}, "
      f"{b} {switches('b') / (2 * n):.3f}")
print()
print(f"| symbol | {a} ns | {b} ns | difference |")
print("| --- | --- | --- | --- |")
rows = sorted(set(sa) | set(sb), key=lambda k: sb.get(k, 0) - sa.get(k, 0), reverse=True)
for k in rows[:25]:
    print(f"| `{k}` | {ns(sa.get(k, 0)):.0f} | {ns(sb.get(k, 0)):.0f} | "
          f"{ns(sb.get(k, 0) - sa.get(k, 0)):+.0f} |")
EOF
