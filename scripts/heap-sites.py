#!/usr/bin/env python3
"""Fits each allocation site's sampled live bytes against time across jemalloc's heap
dumps (a `jemalloc-profile` build run with MALLOC_CONF=prof:true,...,prof_prefix:DIR/prof;
docs/soak.md). Prints the sites whose live bytes grow fastest from a given minute on.

    scripts/heap-sites.py DIR [FROM_MINUTE]

`JEPROF` names jeprof (made from jemalloc's bin/jeprof.in), `CHRONICLE_BIN` the binary
that wrote the dumps. Each dump's collapsed stacks are cached beside it (DUMP.txt)."""
import os, re, subprocess, sys, glob, collections
directory = sys.argv[1]
dumps = sorted(glob.glob(os.path.join(directory, 'prof.*.i*.heap')))
pids = collections.Counter(os.path.basename(d).split('.')[1] for d in dumps)
pid = pids.most_common(1)[0][0]
dumps = [d for d in dumps if os.path.basename(d).split('.')[1] == pid]
dumps.sort(key=os.path.getmtime)
t0 = os.path.getmtime(dumps[0])
cache = directory
series = collections.defaultdict(dict)
times = []
def site(stack):
    frames = stack.split(';')
    keep = [f for f in frames if re.search(r'chronicle|tantivy|rdkafka|rd_kafka|sqlx|tokio|hyper|axum|prometheus|serde', f)]
    return ' <- '.join(reversed(keep[-4:])) if keep else frames[-1]
for d in dumps:
    out = os.path.join(cache, os.path.basename(d) + '.txt')
    if not os.path.exists(out):
        with open(out, 'w') as f:
            subprocess.run([os.environ.get('JEPROF', 'target/jeprof'), '--collapsed', '--show_bytes', os.environ.get('CHRONICLE_BIN', 'target/release/chronicle'), d], stdout=f, stderr=subprocess.DEVNULL)
    t = (os.path.getmtime(d) - t0) / 60.0
    times.append(t)
    sums = collections.Counter()
    for line in open(out):
        line = line.rstrip('\n')
        if not line: continue
        stack, _, n = line.rpartition(' ')
        sums[site(stack)] += int(n)
    for k, v in sums.items():
        series[k][t] = v
start = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
ts = [t for t in times if t >= start]
rows = []
for k, pts in series.items():
    ys = [pts.get(t, 0) for t in ts]
    n = len(ts)
    if n < 3: continue
    mt = sum(ts)/n; my = sum(ys)/n
    vt = sum((t-mt)**2 for t in ts); vy = sum((y-my)**2 for y in ys)
    cov = sum((t-mt)*(y-my) for t, y in zip(ts, ys))
    slope = cov/vt if vt else 0
    r = cov/((vt*vy)**0.5) if vt and vy else 0
    rows.append((slope, r, my, k))
total = [sum(series[k].get(t, 0) for k in series) for t in ts]
print(f'{len(dumps)} dumps of pid {pid}, {len(ts)} from minute {start}; total sampled live MB first/last: {total[0]/1e6:.1f} / {total[-1]/1e6:.1f}')
rows.sort(reverse=True)
for slope, r, mean, k in rows[:15]:
    print(f'{slope/1024:+8.1f} KiB/min  r={r:+.2f}  mean {mean/1e6:6.2f} MB  {k[:260]}')
