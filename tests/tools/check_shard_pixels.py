#!/usr/bin/python3
"""check_shard_pixels.py SHARD PHOTO SHORT_SIDE [MEAN_TOLERANCE] — the raw image of PHOTO in a
moco-shard shard must equal PIL's Image.open(PHOTO).convert("RGB").resize(..., BILINEAR) with
torchvision's short-side rule: exactly, or within a mean absolute difference (grey levels) when a
tolerance is given. Reads the stream with the zstd command and parses records per man 5 moco-stream."""
import struct
import subprocess
import sys

from PIL import Image


def records(raw):
    pos = 0
    while pos < len(raw):
        magic, rtype, _v, nt, meta_len, desc_len, sid, label, body_len = struct.unpack_from("<IBBHIIqqQ", raw, pos)
        assert magic == 0x525A5354
        body = raw[pos + 64: pos + 64 + body_len]
        pos += 64 + body_len
        tensors, off = [], 0
        for _ in range(nt):
            dtype, rank, name_len = struct.unpack_from("<BBH", body, off)
            dims = struct.unpack_from("<%dq" % rank, body, off + 8)
            name = body[off + 8 + 8 * rank: off + 8 + 8 * rank + name_len].decode()
            off += (8 + 8 * rank + name_len + 7) // 8 * 8
            tensors.append((name, dims))
        data = (desc_len + 63) // 64 * 64 + (meta_len + 63) // 64 * 64
        out = {}
        for name, dims in tensors:
            n = 1
            for d in dims:
                n *= d
            out[name] = (dims, body[data: data + n])
            data += (n + 63) // 64 * 64
        yield rtype, out


def main():
    shard, photo, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tolerance = float(sys.argv[4]) if len(sys.argv) > 4 else None
    raw = subprocess.run(["zstd", "-dc", shard], check=True, capture_output=True).stdout
    for rtype, tensors in records(raw):
        if rtype == 2 and photo.split("/")[-1] in tensors["key"][1].decode():
            dims, pixels = tensors["image"]
            im = Image.open(photo).convert("RGB")
            w, h = im.size
            if w < h:
                ow, oh = size, int(size * h / w)
            else:
                oh, ow = size, int(size * w / h)
            ref = im.resize((ow, oh), Image.BILINEAR).tobytes()
            assert tuple(dims) == (oh, ow, 3), (dims, oh, ow)
            diffs = [abs(a - b) for a, b in zip(ref, pixels)]
            if tolerance is None:
                assert max(diffs) == 0, "max difference %d" % max(diffs)
            else:
                mean = sum(diffs) / len(diffs)
                assert mean <= tolerance, "mean difference %.3f > %.3f" % (mean, tolerance)
                print("mean difference %.3f" % mean)
            return
    sys.exit("no record for " + photo)


if __name__ == "__main__":
    main()
