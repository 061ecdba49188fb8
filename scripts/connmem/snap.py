#!/usr/bin/env python3
# snap.py PID DIR: copy smaps, status and per-thread (tid, comm, syscall) of PID into DIR
import os, sys
pid, d = sys.argv[1], sys.argv[2]
os.makedirs(d, exist_ok=True)
for f in ('smaps', 'status', 'smaps_rollup'):
    open(os.path.join(d, f), 'w').write(open(f'/proc/{pid}/{f}').read())
with open(os.path.join(d, 'tasks'), 'w') as out:
    for t in os.listdir(f'/proc/{pid}/task'):
        try:
            comm = open(f'/proc/{pid}/task/{t}/comm').read().strip()
            sc = open(f'/proc/{pid}/task/{t}/syscall').read().strip()
        except OSError:
            continue
        out.write(f'{t}\t{comm}\t{sc}\n')
