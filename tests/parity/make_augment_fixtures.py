#!/usr/bin/python3
"""make_augment_fixtures.py — fixtures for tests/unit/test_augment.c, from Debian's python3-torchvision
0.14 and python3-pil. Regenerate with: /usr/bin/python3 tests/parity/make_augment_fixtures.py

- crop_stats.txt: for a few image sizes, 20000 draws of RandomResizedCrop.get_params(scale 0.2-1,
  ratio 3/4-4/3): quantiles (5%, 10%, ..., 95%) of the area fraction and of log(w/h), and how
  often the centre-crop fallback came out. One line per size:
  "H W fallback_rate q_area[19] q_logratio[19]".
- resized_crop.txt + raw files: F.resized_crop(img, i, j, h, w, [S, S]) (BILINEAR) of photos, the
  exact crop-then-resize torchvision does. Lines "photo i j h w S file".
- eval.txt + raw files: Resize(R) + CenterCrop(S) of photos. Lines "photo R S file".
Raw files are u8 HWC RGB of PIL's convert("RGB")."""
import math
import os

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "augment")
PHOTOS = os.path.join(HERE, "..", "..", "..", "shared", "data", "photos")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)


def quantiles(values):
    v = sorted(values)
    return [v[min(len(v) - 1, int(q / 100 * len(v)))] for q in range(5, 100, 5)]


with open(os.path.join(OUT, "crop_stats.txt"), "w") as f:
    for h, w in [(375, 500), (200, 1000), (1000, 240), (28, 28), (224, 224)]:
        img = Image.new("RGB", (w, h))
        scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
        # the fallback crop for this size, as get_params computes it
        in_ratio = w / h
        if in_ratio < min(ratio):
            fw, fh = w, int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            fh, fw = h, int(round(h * max(ratio)))
        else:
            fw, fh = w, h
        fallback = ((h - fh) // 2, (w - fw) // 2, fh, fw)
        areas, logratios, falls = [], [], 0
        for _ in range(20000):
            i, j, ch, cw = T.RandomResizedCrop.get_params(img, scale, ratio)
            areas.append(cw * ch / (w * h))
            logratios.append(math.log(cw / ch))
            falls += (i, j, ch, cw) == fallback
        f.write("%d %d %.5f %s %s\n" % (h, w, falls / 20000, " ".join("%.5f" % q for q in quantiles(areas)),
                                        " ".join("%.5f" % q for q in quantiles(logratios))))

with open(os.path.join(OUT, "resized_crop.txt"), "w") as f:
    for photo, (i, j, h, w), s in [("astronaut.png", (10, 20, 300, 250), 64), ("chelsea.png", (0, 0, 300, 451), 48),
                                   ("china.jpg", (101, 33, 97, 131), 64), ("coffee.png", (150, 200, 37, 41), 32)]:
        img = Image.open(os.path.join(PHOTOS, photo)).convert("RGB")
        out = F.resized_crop(img, i, j, h, w, [s, s])
        name = "rc-%s-%d-%d-%d-%d-%d.raw" % (photo.split(".")[0], i, j, h, w, s)
        open(os.path.join(OUT, name), "wb").write(out.tobytes())
        f.write("%s %d %d %d %d %d %s\n" % (photo, i, j, h, w, s, name))

with open(os.path.join(OUT, "eval.txt"), "w") as f:
    for photo, r, s in [("chelsea.png", 256, 224), ("rocket.jpg", 73, 64), ("astronaut.png", 36, 32)]:
        img = Image.open(os.path.join(PHOTOS, photo)).convert("RGB")
        out = T.Compose([T.Resize(r), T.CenterCrop(s)])(img)
        name = "eval-%s-%d-%d.raw" % (photo.split(".")[0], r, s)
        open(os.path.join(OUT, name), "wb").write(out.tobytes())
        f.write("%s %d %d %s\n" % (photo, r, s, name))
