#!/usr/bin/env python3
"""Summarises a dhat heap profile (dhat-heap.json): the allocation sites holding the most
bytes at the end of the run and at its peak, each with the first frames of our own code.

    python3 scripts/dhat-top.py dhat-heap.json [count]
"""
import json
import sys

OWN = ("chronicle", "api::", "commands::", "projections::", "eventstore::", "domain::")
NOISE = ("alloc::", "dhat::", "core::", "std::", "<alloc::", "<core::", "<std::", "[root]")


def frames(profile, pp, limit=6):
    table = profile["ftbl"]
    names = [table[i] for i in pp["fs"]]
    useful = [n for n in names if not n.lstrip("0x123456789abcdef: ").startswith(NOISE)]
    own = [n for n in useful if any(o in n for o in OWN)]
    return (own or useful)[:limit]


def main():
    path = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    with open(path) as f:
        profile = json.load(f)
    pps = profile["pps"]
    end = sum(pp.get("eb", 0) for pp in pps)
    peak = sum(pp.get("gb", 0) for pp in pps)
    print(f"{len(pps)} allocation sites; live at the end {end / 2**20:.1f} MiB, "
          f"at the peak {peak / 2**20:.1f} MiB")
    for key, title in (("eb", "live at the end"), ("gb", "live at the peak")):
        print(f"\n== top {count} sites by bytes {title}")
        for pp in sorted(pps, key=lambda p: p.get(key, 0), reverse=True)[:count]:
            print(f"{pp.get(key, 0) / 2**20:8.2f} MiB in {pp.get(key + 'k', pp.get('ebk', 0)):>8} blocks "
                  f"(total allocated {pp['tb'] / 2**20:.0f} MiB)")
            for name in frames(profile, pp):
                print(f"           {name[:160]}")


if __name__ == "__main__":
    main()
