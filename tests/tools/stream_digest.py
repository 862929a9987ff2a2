#!/usr/bin/python3
"""stream_digest.py [--by-sample] FILE... — a SHA-256 of the data and end records of each tensor
stream (header records left out: they carry the producer's command line), read with the zstd
command and parsed per man 5 moco-stream. Two runs that must give the same shards print the same
lines. --by-sample prints "sample_id sha" for each data record instead, sorted, so streams that
hold the same records in another order compare equal."""
import hashlib
import struct
import subprocess
import sys


def records(path):
    raw = subprocess.run(["zstd", "-dcf", path], check=True, capture_output=True).stdout
    pos = 0
    while pos < len(raw):
        magic, rtype = struct.unpack_from("<IB", raw, pos)
        (sample, _label, body_len) = struct.unpack_from("<qqQ", raw, pos + 16)
        assert magic == 0x525A5354, "not a record at %d" % pos
        yield rtype, sample, raw[pos: pos + 64 + body_len]
        pos += 64 + body_len


def digest(path):
    h = hashlib.sha256()
    for rtype, _sample, rec in records(path):
        if rtype != 1:
            h.update(rec)
    return h.hexdigest()


by_sample = sys.argv[1] == "--by-sample"
for p in sys.argv[2 if by_sample else 1:]:
    if by_sample:
        for line in sorted("%d %s" % (s, hashlib.sha256(r[64:]).hexdigest()) for t, s, r in records(p) if t == 2):
            print(line)
    else:
        print(p.split("/")[-1], digest(p))
