#!/usr/bin/python3
"""shard_peer.py DIR REPEAT — the peer for moco-shard's benchmark: what a Python preprocessing
script does with PIL (Debian's python3-pil) on one core: for every image file in DIR, REPEAT
times: open, convert("RGB"), resize the short side to 256 with BILINEAR (torchvision's rule),
encode as JPEG quality 90. Prints images_per_s=N."""
import io
import os
import sys
import time

from PIL import Image


def main():
    folder, repeat = sys.argv[1], int(sys.argv[2])
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    blobs = [open(f, "rb").read() for f in files]
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeat):
        for blob in blobs:
            im = Image.open(io.BytesIO(blob)).convert("RGB")
            w, h = im.size
            if w < h:
                size = (256, int(256 * h / w))
            else:
                size = (int(256 * w / h), 256)
            im = im.resize(size, Image.BILINEAR)
            out = io.BytesIO()
            im.save(out, format="JPEG", quality=90)
            n += 1
    dt = time.perf_counter() - t0
    print(f"images_per_s={n / dt:.1f}")


if __name__ == "__main__":
    main()
