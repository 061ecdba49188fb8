#!/usr/bin/env python3
# deadstack.py PID THREADNAME: stale return addresses in a thread's stack below its current SP,
# symbolized, with their distance from the top of the stack mapping: shows the deepest call chain
# the thread ever ran (what set the stack's high-water mark).
import sys, struct, subprocess, re
pid, name = sys.argv[1], sys.argv[2]
import os
tid = next(t for t in os.listdir(f'/proc/{pid}/task') if open(f'/proc/{pid}/task/{t}/comm').read().strip() == name)
sp = int(open(f'/proc/{pid}/task/{tid}/syscall').read().split()[-2], 16)
maps = []
for line in open(f'/proc/{pid}/maps'):
    p = line.split()
    a, b = (int(x, 16) for x in p[0].split('-'))
    maps.append((a, b, p[1], int(p[2], 16), p[5] if len(p) > 5 else ''))
st = next(m for m in maps if m[0] <= sp < m[1])
mem = open(f'/proc/{pid}/mem', 'rb')
mem.seek(st[0]); data = mem.read(st[1] - st[0])
texts = [m for m in maps if 'x' in m[2] and m[4]]
cands = []
for off in range(0, len(data), 8):
    v = struct.unpack_from('<Q', data, off)[0]
    for a, b, perm, fo, path in texts:
        if a <= v < b:
            cands.append((st[0] + off, v, path, v - a + fo))
            break
# symbolize (file offset == vaddr for these PIE/so files closely enough: use addr2line with offset)
bypath = {}
for addr, v, path, rel in cands:
    bypath.setdefault(path, set()).add(rel)
sym = {}
for path, rels in bypath.items():
    # convert file offset to vaddr via program headers
    ph = subprocess.run(['readelf', '-lW', path], capture_output=True, text=True).stdout
    loads = [tuple(int(x, 16) for x in l.split()[1:3]) for l in ph.splitlines() if l.strip().startswith('LOAD')]
    rl = sorted(rels)
    vaddrs = []
    for r in rl:
        va = next((r - o + v for o, v in loads[::-1] if r >= o), r)
        vaddrs.append(va)
    out = subprocess.run(['addr2line', '-f', '-C', '-i', '-e', path] + [hex(v) for v in vaddrs], capture_output=True, text=True).stdout
    # -i prints extra inline lines; simpler: run without -i
    out = subprocess.run(['addr2line', '-f', '-C', '-e', path] + [hex(v) for v in vaddrs], capture_output=True, text=True).stdout.splitlines()
    for i, r in enumerate(rl):
        sym[(path, r)] = out[2*i]
top = st[1]
print(f"{name}: mapping {st[1]-st[0]} bytes, SP depth {top - sp}")
for addr, v, path, rel in cands:
    marker = '  (live)' if addr >= sp else ''
    s = sym[(path, rel)]
    if s == '??': continue
    print(f"{top - addr:7d} {os.path.basename(path)[:10]:10} {s[:140]}{marker}")
