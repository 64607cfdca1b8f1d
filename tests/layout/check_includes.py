#!/usr/bin/env python3
"""The layering of core/, checked from its #include lines (ctest `layering`).

- The shared code in core/src/ (the record model, the layer, the IOCTL
  rules, the socket front end) includes no backend's header: it reaches the
  backends only through core/src/backend.h.
- A backend folder (core/src/inproc, preload, ebpf) includes no other
  backend's header.
- No include cycle between modules (a module is a .c and its .h).

Exit status 0 when all hold; otherwise each violation on a line, and 1."""
import os
import re
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
SRC = os.path.join(ROOT, "core", "src")
BACKENDS = ("inproc", "preload", "ebpf")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources():
    for top in ("core/src", "core/ebpf", "core/preload", "core/engine", "core/cli"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                if name.endswith((".c", ".h")):
                    yield os.path.join(dirpath, name)


def includes(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for name in INCLUDE.findall(text):
        target = os.path.normpath(os.path.join(os.path.dirname(path), name))
        if os.path.exists(target):
            yield target


def backend_of(path):
    rel = os.path.relpath(path, SRC).split(os.sep)
    if rel[0] == "..":
        return "outside"
    return rel[0] if len(rel) > 1 and rel[0] in BACKENDS else None


def module(path):
    return os.path.splitext(path)[0]


def main():
    problems = []
    graph = {}
    for path in sources():
        mine = backend_of(path)
        for target in includes(path):
            theirs = backend_of(target)
            rel, trel = os.path.relpath(path, ROOT), os.path.relpath(target, ROOT)
            if mine is None and theirs in BACKENDS:
                problems.append("%s includes %s: the shared code reaches backends only through backend.h" % (rel, trel))
            elif mine in BACKENDS and theirs in BACKENDS and theirs != mine:
                problems.append("%s includes %s: one backend includes another's header" % (rel, trel))
            if module(target) != module(path):
                graph.setdefault(module(path), set()).add(module(target))

    # cycles: a depth-first search that reports each back edge's loop once
    state, stack, seen_cycles = {}, [], set()

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                loop = stack[stack.index(nxt):] + [nxt]
                key = frozenset(loop)
                if key not in seen_cycles:
                    seen_cycles.add(key)
                    problems.append("include cycle: " + " -> ".join(os.path.relpath(m, ROOT) for m in loop))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)

    for p in problems:
        print(p)
    print("layering: %d modules, %d problem(s)" % (len(graph), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
