#!/usr/bin/env python3
# stackscan.py PID SNAPDIR: for sampled reader/writer threads, the stack high-water mark (lowest
# non-zero byte in the stack mapping, read through /proc/PID/mem) and the current depth (SP).
import os, sys, re, statistics
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from analyze import parse_smaps, parse_tasks
pid, snap = sys.argv[1], sys.argv[2]
maps = parse_smaps(f'{snap}/smaps')
tasks = parse_tasks(f'{snap}/tasks')
mem = open(f'/proc/{pid}/mem', 'rb')
res = {}
for tid, comm, sp in tasks:
    if sp is None: continue
    k = 'writer' if re.fullmatch(r'conn-\d+-w', comm) else 'reader' if re.fullmatch(r'conn-\d+', comm) else None
    if not k or len(res.setdefault(k, [])) >= 200: continue
    m = next(m for m in maps if m['start'] <= sp < m['end'])
    mem.seek(m['start']); data = mem.read(m['end'] - m['start'])
    nz = next(i for i, b in enumerate(data) if b)
    # top-of-mapping part that is not stack: glibc's struct pthread + static TLS lie above the
    # initial stack pointer; find the highest page boundary guess by the first frame: not exact.
    res[k].append((m['end'] - m['start'] - nz, m['end'] - sp))
for k, v in res.items():
    hw = [a for a, _ in v]; cur = [b for _, b in v]
    print(f"{k}: n={len(v)} high-water bytes from mapping top: min {min(hw)} median {statistics.median(hw)} max {max(hw)}; "
          f"current depth (SP) median {statistics.median(cur)}")
