#!/usr/bin/env python3
"""CPU time per process name on this machine over a window, from /proc (Linux).

    python3 scripts/cpu-share.py SECONDS [DELAY]

Waits DELAY seconds, then samples every process four times a second for SECONDS and
prints the CPU seconds each process name used (a process that starts or ends inside the
window counts from its start or up to its last sample). docs/benchmarks.md uses it to
split a benchmark's CPU between the server, PostgreSQL, the client and a peer.
"""
import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def processes():
    """pid -> (name, CPU ticks so far, start in ticks since boot)"""
    seen = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seen[int(pid)] = (name, int(fields[11]) + int(fields[12]), int(fields[19]))
    return seen


def machine():
    """(all ticks, idle ticks) of every core"""
    with open("/proc/stat") as f:
        values = list(map(int, f.readline().split()[1:]))
    return sum(values), values[3] + values[4]


def main():
    seconds = float(sys.argv[1])
    time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
    last = processes()
    used = {}
    total0, idle0 = machine()
    start = time.time()
    with open("/proc/uptime") as f:
        boot_ticks = float(f.read().split()[0]) * HZ
    while time.time() - start < seconds:
        time.sleep(0.25)
        for pid, (name, ticks, started) in processes().items():
            before = last.get(pid)
            if before and before[0] == name and before[2] == started:
                base = before[1]
            elif started >= boot_ticks:
                base = 0  # started inside the window
            else:
                base = ticks  # first seen now, older than the window: count from here
            used[name] = used.get(name, 0) + ticks - base
            last[pid] = (name, ticks, started)
    total1, idle1 = machine()
    elapsed = time.time() - start
    busy = (total1 - total0) - (idle1 - idle0)
    print(
        f"window {elapsed:.1f} s; machine busy {100 * busy / max(1, total1 - total0):.0f}%"
        f" of {os.cpu_count()} cores"
    )
    for name, ticks in sorted(used.items(), key=lambda item: -item[1])[:10]:
        if ticks > 0:
            print(f"  {name:<20} {ticks / HZ:7.2f} CPU-s  {100 * ticks / HZ / elapsed:5.1f}% of a core")


if __name__ == "__main__":
    main()
