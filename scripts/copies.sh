#!/usr/bin/env bash
# The copies (`memcpy` and `memmove` of 64 bytes or more) one call makes through a stack of
# `layer_cost`, and where: futures, request heads and responses moved from layer to layer. A
# small preloaded library records each copy's size and caller; the figures per call are
# (count at 3N calls - count at N calls) / 2N, so that start-up cancels out.
#
#   cargo build --release -p benches --bin layer_cost
#   scripts/copies.sh [STACK ...]            # default: raw tower ours; GET, N = 5000
#   METHOD=patch WHERE=ours scripts/copies.sh ours
#
# Prints a markdown table (copies and bytes per call for each stack) and, for the stack named
# by WHERE, the copies per call by size, the function that made each and its source line with
# the lines it was inlined into (from the binary's debug information; inlined code is named by
# the function it was inlined into).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/layer_cost
n=5000
method=${METHOD:-get}
[ -x "$bin" ] || { echo "build it first: cargo build --release -p benches --bin layer_cost" >&2; exit 2; }
for tool in cc python3 addr2line; do
  command -v "$tool" > /dev/null || { echo "$tool is needed" >&2; exit 2; }
done
[ $# -gt 0 ] || set -- raw tower ours

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/copies.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void *(*copy_fn)(void *, const void *, size_t);
static copy_fn real_memcpy, real_memmove;
#define SLOTS 65536
static struct { uintptr_t caller; size_t size; unsigned long count; } seen[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int inside;

static void record(uintptr_t caller, size_t size) {
  if (inside || size < 64) return;
  inside = 1;
  pthread_mutex_lock(&lock);
  size_t h = (caller * 31 ^ size) % SLOTS;
  for (size_t i = 0; i < SLOTS; i++) {
    size_t j = (h + i) % SLOTS;
    if (seen[j].count == 0) { seen[j].caller = caller; seen[j].size = size; }
    if (seen[j].caller == caller && seen[j].size == size) { seen[j].count++; break; }
  }
  pthread_mutex_unlock(&lock);
  inside = 0;
}

static void resolve(void) {
  real_memcpy = (copy_fn)dlsym(RTLD_NEXT, "memcpy");
  real_memmove = (copy_fn)dlsym(RTLD_NEXT, "memmove");
}

/* Byte by byte while the real functions are being looked up (dlsym may copy). */
static void *slow_move(void *d, const void *s, size_t n) {
  unsigned char *dd = d;
  const unsigned char *ss = s;
  if (dd < ss) for (size_t i = 0; i < n; i++) dd[i] = ss[i];
  else for (size_t i = n; i > 0; i--) dd[i - 1] = ss[i - 1];
  return d;
}

void *memcpy(void *d, const void *s, size_t n) {
  if (!real_memcpy) { if (inside) return slow_move(d, s, n); inside = 1; resolve(); inside = 0; }
  record((uintptr_t)__builtin_return_address(0), n);
  return real_memcpy(d, s, n);
}

void *memmove(void *d, const void *s, size_t n) {
  if (!real_memmove) { if (inside) return slow_move(d, s, n); inside = 1; resolve(); inside = 0; }
  record((uintptr_t)__builtin_return_address(0), n);
  return real_memmove(d, s, n);
}

__attribute__((destructor)) static void dump(void) {
  inside = 1;
  const char *path = getenv("COPIES_OUT");
  FILE *out = path ? fopen(path, "w") : NULL;
  if (!out) return;
  FILE *maps = fopen("/proc/self/maps", "r");
  char line[1024];
  while (maps && fgets(line, sizeof line, maps)) fprintf(out, "map %s", line);
  if (maps) fclose(maps);
  for (size_t i = 0; i < SLOTS; i++)
    if (seen[i].count) fprintf(out, "%lx %zu %lu\n", (unsigned long)seen[i].caller, seen[i].size, seen[i].count);
  fclose(out);
}
EOF
cc -O2 -shared -fPIC -o "$dir/copies.so" "$dir/copies.c" -ldl

for stack in "$@"; do
  for calls in "$n" $((3 * n)); do
    COPIES_OUT="$dir/$stack.$calls" LD_PRELOAD="$dir/copies.so" "$bin" "$stack" "$calls" "$method" > /dev/null
  done
done

python3 - "$dir" "$n" "$bin" "${WHERE:-}" "$@" <<'EOF'
import os, subprocess, sys
d, n, binary, where, stacks = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
name = os.path.basename(binary)

def load(path):
    # Callers as offsets in the binary: each run is loaded at an address of its own.
    base, rows = None, {}
    for line in open(path):
        if line.startswith("map "):
            f = line[4:].split()
            if base is None and len(f) >= 6 and os.path.basename(f[5]) == name:
                base = int(f[0].split("-")[0], 16) - int(f[2], 16)
            continue
        caller, size, count = line.split()
        key = (int(caller, 16) - (base or 0), int(size))
        rows[key] = rows.get(key, 0) + int(count)
    return rows

def per_call(stack):
    a, b = load(f"{d}/{stack}.{n}"), load(f"{d}/{stack}.{3 * n}")
    # Copies made on most calls; a buffer that grows now and then is not a call's copy.
    rows = {k: (b[k] - a.get(k, 0)) / (2 * n) for k in b}
    return {k: c for k, c in rows.items() if c >= 0.05}

print("| stack | copies of 64 B or more per call | bytes per call |")
print("| --- | --- | --- |")
for stack in stacks:
    rows = per_call(stack)
    print(f"| {stack} | {sum(rows.values()):.1f} | {sum(s * c for (_, s), c in rows.items()):.0f} |")
if where:
    rows = per_call(where)
    sites = sorted(rows.items(), key=lambda kv: -kv[0][1] * kv[1])
    out = subprocess.run(["addr2line", "-f", "-C", "-e", binary] + [hex(c - 1) for (c, _), _ in sites],
                         capture_output=True, text=True).stdout.split("\n")

    def line_of(caller):
        # The source line of the copy, then the lines it was inlined into (innermost first).
        chain = subprocess.run(["addr2line", "-i", "-e", binary, hex(caller - 1)],
                               capture_output=True, text=True).stdout.split()
        # Each line is FILE:LINE, sometimes followed by "(discriminator N)".
        return " < ".join(os.path.basename(loc) for loc in chain if ":" in loc)

    print(f"\n{where}: each copy, the largest first\n")
    print("| bytes | per call | made in | at (inlined into) |")
    print("| --- | --- | --- | --- |")
    for i, ((caller, size), count) in enumerate(sites):
        print(f"| {size} | {count:.2f} | `{out[2 * i][:110]}` | {line_of(caller)} |")
EOF
