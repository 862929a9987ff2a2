#!/usr/bin/python3
"""stream_digest.py FILE... — a SHA-256 of the data and end records of each tensor stream (header
records left out: they carry the producer's command line), read with the zstd command and parsed
per man 5 moco-stream. Two runs that must give the same shards print the same lines."""
import hashlib
import struct
import subprocess
import sys


def digest(path):
    raw = subprocess.run(["zstd", "-dcf", path], check=True, capture_output=True).stdout
    h, pos = hashlib.sha256(), 0
    while pos < len(raw):
        magic, rtype = struct.unpack_from("<IB", raw, pos)
        (body_len,) = struct.unpack_from("<Q", raw, pos + 32)
        assert magic == 0x525A5354, "not a record at %d" % pos
        if rtype != 1:
            h.update(raw[pos: pos + 64 + body_len])
        pos += 64 + body_len
    return h.hexdigest()


for p in sys.argv[1:]:
    print(p.split("/")[-1], digest(p))
