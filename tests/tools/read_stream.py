#!/usr/bin/python3
"""read_stream.py — the records of a tensor stream as numpy arrays, for tests written in Python
(per man 5 moco-stream; decompressed with the zstd command, checks not verified — the C reader
does that). Import it:  from read_stream import records;  for sample, label, tensors in records(p)."""
import json
import struct
import subprocess

import numpy as np

DTYPES = {1: np.uint8, 2: np.int32, 3: np.int64, 4: np.float16, 5: None, 6: np.float32}


def pad64(n):
    return (n + 63) // 64 * 64


def records(path, header=False):
    """Yield (sample_id, label, {name: array}) for each data record; with header=True the first item
    is the header as a dict."""
    raw = subprocess.run(["zstd", "-dcf", path], check=True, capture_output=True).stdout
    pos = 0
    while pos < len(raw):
        magic, rtype, _version, ntensors, meta_len, desc_len, sample, label, body_len = struct.unpack_from(
            "<IBBHIIqqQ", raw, pos)
        assert magic == 0x525A5354, "not a record at %d" % pos
        body = raw[pos + 64: pos + 64 + body_len]
        pos += 64 + body_len
        if rtype == 1 and header:
            yield json.loads(body[pad64(desc_len): pad64(desc_len) + meta_len])
        if rtype != 2:
            continue
        descs, off = [], 0
        for _ in range(ntensors):
            dtype, rank, name_len = struct.unpack_from("<BBH", body, off)
            dims = struct.unpack_from("<%dq" % rank, body, off + 8)
            name = body[off + 8 + 8 * rank: off + 8 + 8 * rank + name_len].decode()
            off += (8 + 8 * rank + name_len + 7) // 8 * 8
            descs.append((name, DTYPES[dtype], dims))
        data = pad64(desc_len) + pad64(meta_len)
        tensors = {}
        for name, dt, dims in descs:
            n = int(np.prod(dims)) if dims else 1
            a = np.frombuffer(body, dtype=dt, count=n, offset=data).reshape(dims)
            tensors[name] = a
            data += pad64(a.nbytes)
        yield sample, label, tensors
