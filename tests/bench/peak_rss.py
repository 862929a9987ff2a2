#!/usr/bin/env python3
"""peak_rss.py SCRIPT ARGS... — run a Python script (a peer) and append its peak resident memory in
MiB to the JSON line it prints, as "peak_rss_mib", so both sides of a benchmark report the same measure."""
import json
import resource
import runpy
import sys
import io
import contextlib

buf = io.StringIO()
sys.argv = sys.argv[1:]
with contextlib.redirect_stdout(buf):
    runpy.run_path(sys.argv[0], run_name="__main__")
for line in buf.getvalue().splitlines():
    try:
        d = json.loads(line)
    except ValueError:
        print(line)
        continue
    d["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(d))
