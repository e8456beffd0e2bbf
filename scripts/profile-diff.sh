#!/usr/bin/env bash
# Where two clients' CPU goes on loopback, symbol by symbol, in real time: each client runs
# under `perf record` (the cpu-clock software event, which works where hardware counters do
# not) in its own run of `loopback_interleaved --only CLIENT`, raw hyper-util interleaved with
# it in both runs, and the CPU time per request of every symbol is compared.
#
#   cargo build --release -p benches --bin loopback_interleaved
#   scripts/profile-diff.sh ["CLIENT A"] ["CLIENT B"] [IN_FLIGHT] [ROUNDS]
#   BIN_A=old/loopback_interleaved scripts/profile-diff.sh "genesys-tower stack" "genesys-tower stack"
#   ARGS=--ablation scripts/profile-diff.sh "the leaf alone, with the header" "tower's own stack"
#
# Defaults: "tower's own stack", "genesys-tower stack", 32 in flight, 12 rounds; BIN_A and BIN_B
# (the binary each client runs from, to compare two builds) default to this tree's; ARGS are
# passed to both runs (`--ablation` for the rows it adds). Prints a markdown table of the
# symbols whose time per request differs most either way (B minus A, in ns per request of the
# client: its own code and what it makes hyper, the kernel and the allocator do), with each
# client's CPU per request over raw's in its own run, the context switches per request, and the
# time of the clients' own code (the middleware crates' and the benches' symbols: what a change
# to a stack moves directly). Samples are at 4999 Hz: a symbol below about 20 ns per request is
# noise. Two builds inline differently: between builds, compare the client's own symbols only.
set -euo pipefail
cd "$(dirname "$0")/.."
a=${1:-"tower's own stack"}
b=${2:-"genesys-tower stack"}
in_flight=${3:-32}
rounds=${4:-12}
bin_a=${BIN_A:-target/release/loopback_interleaved}
bin_b=${BIN_B:-target/release/loopback_interleaved}
hz=4999
command -v perf > /dev/null || { echo "perf is needed (Debian: apt-get install linux-perf)" >&2; exit 2; }
for bin in "$bin_a" "$bin_b"; do
  [ -x "$bin" ] || { echo "$bin: build it first: cargo build --release -p benches --bin loopback_interleaved" >&2; exit 2; }
done
case $in_flight in
  1) per_round=10000 ;;
  32) per_round=30000 ;;
  *) echo "IN_FLIGHT is 1 or 32" >&2; exit 2 ;;
esac

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
profile() { # name client binary -> $dir/name.txt (symbols with their samples), $dir/name.cs
  perf record -q -F "$hz" -o "$dir/$1.data" -- \
    perf stat -x, -e context-switches -o "$dir/$1.cs" \
    "$3" ${ARGS:-} --only "$2" --in-flight "$in_flight" --rounds "$rounds" > "$dir/$1.out"
  perf report -i "$dir/$1.data" --no-children --sort symbol -g none --show-nr-samples \
    2> /dev/null > "$dir/$1.txt"
}
profile a "$a" "$bin_a"
profile b "$b" "$bin_b"
grep -h "^| \(raw\|$a\|$b\)" "$dir/a.out" "$dir/b.out" || true
echo
python3 - "$dir" "$a" "$b" "$hz" $((rounds * per_round)) <<'EOF'
import re, sys
d, a, b, hz, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if a == b:  # one client from two builds
    a, b = f"{a} (A)", f"{b} (B)"

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

def over_raw(name):
    # The client's CPU per request over raw's, both measured in the same run (its table).
    cpu = {}
    for line in open(f"{d}/{name}.out"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[1].isdigit():
            cpu["raw" if cells[0] == "raw hyper-util" else "client"] = float(cells[5])
    return (cpu["client"] - cpu["raw"]) * 1000 if len(cpu) == 2 else float("nan")

# Runs one after the other see the machine in different states: compare each client with the
# raw rounds of its own run, and its own symbols between runs.
print(f"CPU per request over raw's, in its own run: {a} {over_raw('a'):.0f} ns, "
      f"{b} {over_raw('b'):.0f} ns")
print(f"context switches per request (both clients of a run): {a} {switches('a') / (2 * n):.3f}, "
      f"{b} {switches('b') / (2 * n):.3f}")
# The clients' own code: the functions of the middleware crates and the benches (the leaf's
# body mapping included), not hyper's, tokio's, the allocator's or the kernel's, even where
# their types name a middleware type (`<T as Trait>::f` and `drop_in_place<T>` are T's crate's).
own = re.compile(r"(genesys_tower|tower|tower_http|tower_layer|benches)::")
def is_own(symbol):
    return own.match(symbol.removeprefix("core::ptr::drop_in_place<").lstrip("<")) is not None
own_ns = lambda s: ns(sum(v for k, v in s.items() if is_own(k)))
print(f"own code per request (the middleware crates' and the benches' symbols): {a} "
      f"{own_ns(sa):.0f} ns, {b} {own_ns(sb):.0f} ns")
print()
print(f"| symbol | {a} ns | {b} ns | difference |")
print("| --- | --- | --- | --- |")
rows = sorted(set(sa) | set(sb), key=lambda k: sb.get(k, 0) - sa.get(k, 0), reverse=True)
# The 25 symbols B spends most more time in, then the 10 it spends most less time in.
for k in rows[:25] + rows[-10:]:
    print(f"| `{k}` | {ns(sa.get(k, 0)):.0f} | {ns(sb.get(k, 0)):.0f} | "
          f"{ns(sb.get(k, 0) - sa.get(k, 0)):+.0f} |")
EOF
