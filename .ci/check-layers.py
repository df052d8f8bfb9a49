#!/usr/bin/env python3
"""The dependency rule of ARCHITECTURE.md, checked on src/ (comment lines are ignored).

- no import cycle between top-level modules;
- the domain and the services name no storage, no edge, no wire and no composition root
  (a domain's service may ask the gate in `access`, which names no service);
- no edge names storage;
- each I/O technology appears only in the modules that own it.

Prints the module graph's summary; exits 1 with one line per violation.
"""
import collections
import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "src"

LAYER = {
    # leaves
    "store_error": "leaf", "fsutil": "leaf", "limits": "leaf", "datadir_lock": "leaf",
    "net_limits": "leaf", "ratelimit": "leaf", "unix_time": "leaf", "config": "leaf",
    "metrics": "leaf", "error_chain": "leaf",
    # domain (each with its store trait and its service)
    "vault": "domain", "identity": "domain", "pairing": "domain", "policy": "domain",
    "audit": "domain", "auth": "domain", "events": "domain", "integrity": "domain",
    "login": "domain", "backup": "domain",
    # services above the domain
    "access": "service", "devices": "service",
    "storage": "storage",
    "node": "composition", "node_backup": "composition",
    "wire": "wire",
    "rpc": "edge", "quic": "edge", "console": "edge", "cli": "edge",
    # entry and harnesses
    "lib": "entry", "main": "entry", "testkit": "testkit", "fuzzing": "testkit",
}
# Which files may name each technology (path prefixes under src/).
TECH = {
    "tonic": ("rpc/", "wire/", "cli/", "testkit/"),
    "rusqlite": ("storage/",),
    "quinn": ("quic/", "testkit/"),
    "axum": ("console/",),
    "hyper": ("console/", "cli/auth.rs", "testkit/"),
    "reqwest": ("auth/oauth.rs",),
}
FORBIDDEN = {
    "leaf": {"storage", "edge", "wire", "composition", "service", "domain"},
    # A domain's own service may ask the gate (`access`); the cycle check keeps it one-way.
    "domain": {"storage", "edge", "wire", "composition"},
    "service": {"storage", "edge", "wire", "composition"},
    "edge": {"storage"},
}

edges = collections.defaultdict(set)
lines = collections.Counter()
problems = []
for dirpath, _, files in os.walk(SRC):
    for name in sorted(files):
        if not name.endswith(".rs"):
            continue
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, SRC)
        top = rel.split("/")[0].removesuffix(".rs")
        if top not in LAYER:
            problems.append(f"{rel}: top-level module {top!r} has no layer in .ci/check-layers.py")
            continue
        raw = open(path, encoding="utf-8").read()
        lines[LAYER[top]] += raw.count("\n")
        code = "\n".join(l for l in raw.split("\n") if not l.lstrip().startswith("//"))
        for m in re.finditer(r"\bcrate::(\w+)", code):
            if m.group(1) != top and m.group(1) in LAYER:
                edges[top].add(m.group(1))
                if LAYER[m.group(1)] in FORBIDDEN.get(LAYER[top], ()):
                    problems.append(f"{rel}: {LAYER[top]} module {top!r} names {LAYER[m.group(1)]} module {m.group(1)!r}")
        for tech, allowed in TECH.items():
            if re.search(rf"\b{tech}::", code) and not rel.startswith(allowed):
                problems.append(f"{rel}: names {tech} (only {', '.join(allowed)} may)")

# Strongly connected components (Tarjan) of the module graph.
index, low, stack, on, sccs = {}, {}, [], set(), []
counter = [0]
sys.setrecursionlimit(10_000)

def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))

for v in sorted(set(edges) | {m for t in edges.values() for m in t}):
    if v not in index:
        visit(v)
for comp in sccs:
    problems.append(f"import cycle between top-level modules: {' <-> '.join(comp)}")

print("lines per layer: " + ", ".join(f"{k} {v}" for k, v in sorted(lines.items())))
print(f"module edges: {sum(len(v) for v in edges.values())}, cycles: {len(sccs)}")
for p in problems:
    print("error: " + p)
sys.exit(1 if problems else 0)
