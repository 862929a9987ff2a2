#!/usr/bin/env python3
"""profile_peer.py PEER [ARGS...] — run the PyTorch peer (../shared/peers/moco_torch.py) with ARGS
under torch.profiler and print its GPU kernels by total time, for the per-kernel comparison in
tests/cuda/device-check.sh's profile part. The totals cover all of the peer's steps (--warmup plus
--steps, cuDNN's benchmark trials in the first), so divide by their number for a step."""
import runpy
import sys

import torch
from torch.profiler import ProfilerActivity, profile

peer = sys.argv[1]
sys.argv = sys.argv[1:]
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    runpy.run_path(peer, run_name="__main__")
averages = prof.key_averages()
for key in ("self_device_time_total", "self_cuda_time_total"):
    try:
        print(averages.table(sort_by=key, row_limit=80, max_name_column_width=90))
        break
    except (AttributeError, KeyError, ValueError):
        continue
