#!/usr/bin/env python3
"""Break a process's RSS down by mapping kind, using a snapshot dir made by snap.py (see run.sh)."""
import sys, os, re, collections, json

def parse_smaps(path):
    maps = []
    cur = None
    for line in open(path):
        m = re.match(r'^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$', line)
        if m:
            cur = dict(start=int(m[1], 16), end=int(m[2], 16), perms=m[3], path=m[4].strip())
            maps.append(cur)
            continue
        k, _, v = line.partition(':')
        v = v.strip()
        if v.endswith(' kB'):
            cur[k] = int(v.split()[0])
    return maps

def parse_tasks(path):
    tasks = []
    for line in open(path):
        tid, comm, syscall = line.rstrip('\n').split('\t')
        parts = syscall.split()
        sp = int(parts[-2], 16) if len(parts) >= 3 and parts[0] != 'running' else None
        tasks.append((int(tid), comm, sp))
    return tasks

def classify(snap):
    maps = parse_smaps(os.path.join(snap, 'smaps'))
    tasks = parse_tasks(os.path.join(snap, 'tasks'))
    kind = {}
    # thread stacks
    for tid, comm, sp in tasks:
        if sp is None:
            continue
        for i, m in enumerate(maps):
            if m['start'] <= sp < m['end']:
                if m['path'] == '[stack]':
                    k = 'main stack'
                elif re.fullmatch(r'conn-\d+-w', comm):
                    k = 'writer stack'
                elif re.fullmatch(r'conn-\d+', comm):
                    k = 'reader stack'
                else:
                    k = 'other thread stack'
                kind[i] = k
                # guard page just below
                if i > 0 and maps[i-1]['end'] == m['start'] and maps[i-1]['perms'].startswith('---'):
                    kind[i-1] = 'stack guard'
    ARENA = 64 << 20
    for i, m in enumerate(maps):
        if i in kind:
            continue
        if m['path'] == '[heap]':
            kind[i] = 'main heap (brk)'
        elif m['path'] and not m['path'].startswith('['):
            kind[i] = 'file-backed'
        elif m['path'].startswith('['):
            kind[i] = m['path']
        elif m['perms'].startswith('---'):
            kind[i] = 'reserved (---p)'
        else:
            # arena heap: the rw part of a 64 MiB aligned heap, or contiguous with a ---p tail
            base = m['start'] & ~(ARENA - 1)
            nxt = maps[i+1] if i + 1 < len(maps) else None
            if (m['start'] % ARENA == 0 or (m['end'] - base) <= ARENA and nxt and nxt['start'] == m['end'] and nxt['perms'].startswith('---') and (nxt['end'] - base) == ARENA):
                kind[i] = 'malloc arena heaps'
            else:
                kind[i] = 'other anon'
    agg = collections.defaultdict(lambda: dict(n=0, rss=0, size=0))
    for i, m in enumerate(maps):
        a = agg[kind[i]]
        a['n'] += 1
        a['rss'] += m.get('Rss', 0)
        a['size'] += m.get('Size', 0)
    threads = collections.Counter()
    for tid, comm, sp in tasks:
        threads[re.sub(r'\d+', 'N', comm)] += 1
    status = {}
    for line in open(os.path.join(snap, 'status')):
        k, _, v = line.partition(':')
        status[k] = v.strip()
    return agg, threads, status, maps, kind, tasks

def main():
    before, after, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ab, tb, sb, _, _, _ = classify(before)
    aa, ta, sa, maps, kind, tasks = classify(after)
    print(f"VmRSS before {sb['VmRSS']}  after {sa['VmRSS']}  RssAnon {sb['RssAnon']} -> {sa['RssAnon']}  threads {sb['Threads']} -> {sa['Threads']}  VmPTE {sb['VmPTE']} -> {sa['VmPTE']}")
    rb = int(sb['VmRSS'].split()[0]); ra = int(sa['VmRSS'].split()[0])
    print(f"VmRSS delta per connection: {(ra-rb)/n:.2f} KiB  (n={n})")
    print(f"{'kind':24} {'maps':>7} {'rss_before':>10} {'rss_after':>10} {'delta/conn KiB':>15}")
    tot = 0
    for k in sorted(set(ab) | set(aa), key=lambda k: -(aa.get(k, {'rss':0})['rss'])):
        b = ab.get(k, dict(n=0, rss=0, size=0)); a = aa.get(k, dict(n=0, rss=0, size=0))
        d = (a['rss'] - b['rss']) / n
        tot += a['rss'] - b['rss']
        print(f"{k:24} {a['n']:7} {b['rss']:10} {a['rss']:10} {d:15.2f}")
    print(f"{'sum of deltas':24} {'':7} {'':10} {'':10} {tot/n:15.2f}")
    print("threads:", dict(ta))
    # per-thread stack rss distribution
    for k in ('reader stack', 'writer stack'):
        rs = sorted(maps[i]['Rss'] for i in kind if kind[i] == k)
        if rs:
            sz = maps[[i for i in kind if kind[i]==k][0]]['Size']
            print(f"{k}: count {len(rs)} mapping size {sz} KiB  Rss min {rs[0]} median {rs[len(rs)//2]} max {rs[-1]} mean {sum(rs)/len(rs):.1f}")
    ar = [(maps[i]['Size'], maps[i]['Rss']) for i in kind if kind[i] == 'malloc arena heaps']
    print("arena heaps (size,rss):", sorted(ar, key=lambda x: -x[1])[:20])
    oa = sorted(((maps[i]['Size'], maps[i]['Rss']) for i in kind if kind[i] == 'other anon'), key=lambda x: -x[1])
    print("other anon (size,rss) top:", oa[:15], "count", len(oa))

if __name__ == '__main__':
    main()
