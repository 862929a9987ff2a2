#!/bin/sh
# make-photos.sh SRC OUT — ImageNet-like JPEGs: the photos of SRC re-encoded at 500 px on the long
# side, quality 90. make bench's augmentation benchmark uses them, and the build keeps a copy in
# build/photos500 for a GPU machine's end-to-end run (tests/cuda/device-check.sh), which gets the
# build folder but not ../shared. Needs Debian's python3-pil; without it, says so and leaves OUT
# empty (device-check.sh then skips the end-to-end run).
set -u
src=$1 out=$2
mkdir -p "$out"
/usr/bin/python3 - "$src" "$out" <<'PY' || echo "make-photos.sh: no python3-pil: no JPEGs made in $out" >&2
import os, sys
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
for f in sorted(os.listdir(src)):
    if f.endswith((".jpg", ".png")) and "truncated" not in f:
        im = Image.open(os.path.join(src, f)).convert("RGB")
        w, h = im.size
        s = 500 / max(w, h)
        im.resize((round(w * s), round(h * s)), Image.BILINEAR).save(os.path.join(out, f.split(".")[0] + ".jpg"), quality=90)
PY
exit 0
