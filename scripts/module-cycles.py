#!/usr/bin/env python3
"""Lists the cycles between the top-level modules of each crate of the workspace.

A module `a` depends on `b` when code in `a` (its file, or its folder) names `crate::b` (or
`crate::{.., b, ..}`). Comments and doc comments are not code; `#[cfg(test)]` modules count, as
they are compiled with the crate. Prints every cycle and exits 1 when there is one.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def top_module(src: pathlib.Path, file: pathlib.Path) -> str:
    rel = file.relative_to(src)
    if len(rel.parts) == 1:
        return rel.stem
    return rel.parts[0]


def references(text: str) -> set[str]:
    code = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("//"):
            continue
        code.append(line.split("//")[0] if "//" in line and '"' not in line else line)
    code = "\n".join(code)
    names = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", code))
    for group in re.findall(r"\bcrate::\{([^}]*)\}", code):
        names.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
    return names


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, seen = [], set()

    def walk(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                cycle = path[:]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle + [nxt])
            elif nxt not in path and nxt > path[0]:
                walk(nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def main() -> int:
    bad = 0
    for src in sorted(ROOT.glob("crates/*/src")) + [ROOT / "examples/src", ROOT / "benches/src"]:
        if not src.is_dir():
            continue
        modules = {top_module(src, f) for f in src.rglob("*.rs")} - {"lib", "main"}
        graph: dict[str, set[str]] = {m: set() for m in modules}
        for f in src.rglob("*.rs"):
            m = top_module(src, f)
            if m in ("lib", "main") or m == "bin":
                continue
            graph[m] |= {r for r in references(f.read_text()) if r in modules and r != m}
        for c in cycles(graph):
            bad += 1
            print(f"{src.parent.name}: {' -> '.join(c)}")
    if bad == 0:
        print("no module cycles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
