#!/usr/bin/env python3
"""Summarises a dhat heap profile (dhat-heap.json): the allocation sites holding the most
bytes at the end of the run and at its peak, and those allocating the most over the run,
each with its first frames outside the allocator and the standard library.

    python3 scripts/dhat-top.py dhat-heap.json [count]
"""
import json
import sys

# Frames inside the allocator and the standard library say nothing about who allocated.
PLUMBING = ("alloc/src", "dhat-0.3", "raw_vec", "core/src", "/src/alloc/", "src/vec/",
            "std/src", "[root]", "__rust_alloc")


def frames(profile, pp, limit=5):
    names = (profile["ftbl"][i] for i in pp["fs"])
    useful = [n.split(": ", 1)[-1] for n in names if not any(p in n for p in PLUMBING)]
    return useful[:limit]


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
    for key, title in (("eb", "live at the end"), ("gb", "live at the peak"),
                       ("tb", "allocated over the run (churn)")):
        print(f"\n== top {count} sites by bytes {title}")
        for pp in sorted(pps, key=lambda p: p.get(key, 0), reverse=True)[:count]:
            print(f"{pp.get(key, 0) / 2**20:8.2f} MiB in {pp.get(key + 'k', 0):>8} blocks "
                  f"(total allocated {pp['tb'] / 2**20:.0f} MiB)")
            for name in frames(profile, pp):
                print(f"           {name[:160]}")


if __name__ == "__main__":
    main()
