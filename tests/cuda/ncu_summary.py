#!/usr/bin/env python3
"""ncu_summary.py CSV [N] — Nsight Compute's `--csv --metrics gpu__time_duration.sum` output (of one
profiled step, tests/cuda/device-check.sh's profile part) as GPU time per kernel name, largest
first: calls, milliseconds, share of the step; N rows (default 30) and the total."""
import csv
import sys
from collections import defaultdict

rows = [line for line in open(sys.argv[1], errors="replace") if line.startswith('"')]
total, calls, time_ns = 0.0, defaultdict(int), defaultdict(float)
for r in csv.DictReader(rows):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"]
    name = name if len(name) <= 100 else name[:97] + "..."
    ns = float(r["Metric Value"].replace(",", ""))
    calls[name] += 1
    time_ns[name] += ns
    total += ns
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 30
print("%8s %10s %7s  %s" % ("calls", "ms", "share", "kernel"))
for name, ns in sorted(time_ns.items(), key=lambda kv: -kv[1])[:limit]:
    print("%8d %10.3f %6.1f%%  %s" % (calls[name], ns / 1e6, 100 * ns / max(total, 1), name))
print("%8d %10.3f %6.1f%%  all kernels" % (sum(calls.values()), total / 1e6, 100.0))
