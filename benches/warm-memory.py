#!/usr/bin/env python3
"""Touches most of the machine's free memory once, then frees it.

On a freshly booted virtual machine the first write to each guest page is a fault in the
hypervisor: a page-cache page the log or the object folder fills for the first time costs
several times what it costs later (measured on the 2-core development VM: `dd` of 1 GB into
the page cache ran at 1.4 GB/s the first time and 4.9 GB/s after; under wrk, the ingress
spent 7.5 % of its CPU copying appended records into fresh page-cache pages, under 1.6 %
once the memory had been touched). A benchmark run on a fresh machine therefore measures the
machine's first touch as well as the product. Run this once after boot, before measuring:

    python3 benches/warm-memory.py            # leaves 2 GiB untouched
    python3 benches/warm-memory.py --keep-gib 4
"""
import argparse
import mmap


def available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no MemAvailable in /proc/meminfo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-gib", type=float, default=2.0, help="memory left untouched")
    args = parser.parse_args()
    total = available_bytes() - int(args.keep_gib * (1 << 30))
    chunk = 1 << 30
    page = mmap.PAGESIZE
    # every region is kept until the end: one freed before the next is mapped would hand
    # the same pages back, and only the first gigabyte would be touched
    regions = []
    while (len(regions) + 1) * chunk <= total:
        region = mmap.mmap(-1, chunk)
        for at in range(0, chunk, page):
            region[at] = 1
        regions.append(region)
    for region in regions:
        region.close()
    print(f"touched {len(regions)} GiB once")


if __name__ == "__main__":
    main()
