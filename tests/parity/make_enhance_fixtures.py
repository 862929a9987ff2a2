#!/usr/bin/python3
"""Write tests/fixtures/enhance/: what torchvision 0.14 on PIL 9.4 images gives for the photometric
operations of enhance.h, for test_enhance to match byte for byte.

Run with Debian's python3-pil 9.4, python3-torchvision 0.14 and numpy:
    /usr/bin/python3 tests/parity/make_enhance_fixtures.py
It reads two photos in ../shared/data/photos (relative to the repository root) and writes:

  cases.txt      one case a line:  OP FACTOR SRC H W C EXPECTED
                 OP is brightness, contrast, saturation, hue, grayscale, blur or flip; FACTOR is the
                 factor, hue_factor or sigma (repr() of a Python float; "-" where there is none);
                 SRC is a raw HWC u8 file written here, or "allrgb": the 4096x4096 image holding every
                 colour once, pixel i = (i >> 16, (i >> 8) & 255, i & 255), which the C test builds;
                 EXPECTED is a raw file of H*W*C bytes or "crc32:XXXXXXXX" (zlib's CRC of them).
  *.rgb, *.l     the small source images ("RGB" and "L") and the expected outputs; the "L" images
                 have the operations that apply to them: brightness, contrast, blur, flip.

Every factor is a float32 value (as ColorJitter draws them: float(torch.empty(1).uniform_(...))), so
the C functions, which take a float, see exactly the number PIL and torchvision saw.
All paths are relative to the repository root, where the tests run.
"""
import os
import zlib

import numpy as np
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter

TOP = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT_REL = "tests/fixtures/enhance"
OUT = os.path.join(TOP, OUT_REL)
PHOTOS = os.path.normpath(os.path.join(TOP, "..", "shared", "data", "photos"))

FACTORS = [0.0, 0.3, 0.6, 1.0, 1.4, 2.5]                 # brightness, contrast, saturation
HUES = [-0.5, -0.1, -0.037, 0.0, 0.05, 0.1, 0.5]
SIGMAS = [0.1, 0.5, 1.0, 1.37, 2.0, 3.0, 4.0, 5.0]          # box radius 0 0 0 0 1 2 3 4
WIDE_SIGMA = 20.0                                         # box radius 19: Pillow's running sum


def f32(x):
    """The float32 value nearest x, as a Python float."""
    return float(np.float32(x))


def rel(name):
    return f"{OUT_REL}/{name}"


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    return rel(name)


def crc(data):
    return "crc32:%08x" % (zlib.crc32(data) & 0xFFFFFFFF)


def pixels(im):
    """HWC bytes of a PIL image, as enhance.h lays them out."""
    return np.asarray(im).astype(np.uint8).tobytes()


def synthetic():
    """48x40 RGB: the hue and saturation edge cases. Rows 0-7: pure and mixed saturated colours at
    every hue step PIL's 8-bit hue can hold near the sector boundaries; rows 8-15: greys and
    near-greys (max - min of 0, 1, 2); rows 16-23: two channels tied at the max or the min; the rest:
    random colours, with dark and bright extremes."""
    rng = np.random.RandomState(20240607)
    a = np.zeros((40, 48, 3), np.uint8)
    for y in range(8):
        for x in range(48):
            h = (x * 48 + y * 6) % 256
            a[y, x] = np.asarray(Image.new("HSV", (1, 1), (h, 255 - 16 * y, 255 - 3 * x)).convert("RGB"))[0, 0]
    for y in range(8, 16):
        for x in range(48):
            v = (x * 5 + y * 17) % 256
            d = (x + y) % 3
            a[y, x] = [v, min(255, v + d), max(0, v - (d and 1))]
    for y in range(16, 24):
        for x in range(48):
            hi, lo = 255 - 4 * x, (7 * x + 13 * y) % 200
            lo = min(lo, hi)
            mid = (hi + lo) // 2
            a[y, x] = [[hi, hi, lo], [hi, lo, lo], [lo, hi, hi], [lo, lo, hi], [hi, lo, hi], [mid, hi, hi],
                       [lo, mid, lo], [hi, mid, hi]][(x + y) % 8]
    a[24:32] = rng.randint(0, 256, (8, 48, 3))
    a[32:36] = rng.randint(0, 24, (4, 48, 3))
    a[36:40] = rng.randint(232, 256, (4, 48, 3))
    return Image.fromarray(a, "RGB")


def all_rgb():
    i = np.arange(1 << 24, dtype=np.uint32)
    a = np.stack([(i >> 16) & 255, (i >> 8) & 255, i & 255], -1).astype(np.uint8)
    return Image.fromarray(a.reshape(4096, 4096, 3), "RGB")


def ops():
    """(op, factor, function of a PIL image) for every case."""
    out = []
    for f in FACTORS:
        out.append(("brightness", f32(f), lambda im, f=f32(f): F.adjust_brightness(im, f)))
    for f in FACTORS:
        out.append(("contrast", f32(f), lambda im, f=f32(f): F.adjust_contrast(im, f)))
    for f in FACTORS:
        out.append(("saturation", f32(f), lambda im, f=f32(f): F.adjust_saturation(im, f)))
    for f in HUES:
        out.append(("hue", f32(f), lambda im, f=f32(f): F.adjust_hue(im, f)))
    out.append(("grayscale", None, lambda im: F.rgb_to_grayscale(im, num_output_channels=3)))
    for s in SIGMAS:
        # MoCo's GaussianBlur: x.filter(ImageFilter.GaussianBlur(radius=sigma))
        out.append(("blur", f32(s), lambda im, s=f32(s): im.filter(ImageFilter.GaussianBlur(radius=s))))
    out.append(("flip", None, lambda im: F.hflip(im)))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.remove(os.path.join(OUT, name))
    chelsea = Image.open(os.path.join(PHOTOS, "chelsea.png")).convert("RGB").crop((190, 70, 230, 102))
    astronaut = Image.open(os.path.join(PHOTOS, "astronaut.png")).convert("RGB").crop((200, 80, 240, 112))
    rng = np.random.RandomState(7)
    tiny = Image.fromarray(rng.randint(0, 256, (5, 3, 3)).astype(np.uint8), "RGB")  # blur radius > size
    column = Image.fromarray(rng.randint(0, 256, (9, 1, 3)).astype(np.uint8), "RGB")  # one pixel wide
    row = Image.fromarray(rng.randint(0, 256, (1, 9, 3)).astype(np.uint8), "RGB")  # one pixel tall
    sources = [("chelsea", chelsea), ("astronaut", astronaut), ("synthetic", synthetic()), ("tiny", tiny),
               ("column", column), ("row", row)]

    lines = ["# written by tests/parity/make_enhance_fixtures.py: OP FACTOR SRC H W C EXPECTED"]

    def case(op, factor, src, im, out):
        c = len(out.getbands())
        data = pixels(out)
        assert len(data) == im.width * im.height * c
        lines.append("%s %s %s %d %d %d %s" % (op, "-" if factor is None else repr(factor), src, im.height,
                                                im.width, c, expected(op, factor, src, data, c)))

    def expected(op, factor, src, data, c):
        if src == "allrgb":
            return crc(data)
        tag = "" if factor is None else "_%.3g" % factor
        return write("%s_%s%s.%s" % (os.path.basename(src).split(".")[0], op, tag, "rgb" if c == 3 else "l"),
                     data)

    for name, im in sources:
        src = write(name + ".rgb", pixels(im))
        for op, factor, fn in ops():
            if name == "tiny" and op != "blur":
                continue
            if name in ("column", "row") and (op not in ("blur", "flip") or factor not in (None, f32(0.5), f32(2.0))):
                continue
            case(op, factor, src, im, fn(im))
        if name in ("chelsea", "astronaut"):
            grey = im.convert("L")
            gsrc = write(name + ".l", pixels(grey))
            for op, factor, fn in ops():
                if op in ("brightness", "contrast", "blur", "flip"):  # what applies to "L" images
                    case(op, factor, gsrc, grey, fn(grey))
        if name in ("tiny", "chelsea", "column", "row"):
            case("blur", f32(WIDE_SIGMA), src, im, im.filter(ImageFilter.GaussianBlur(radius=f32(WIDE_SIGMA))))
        if name == "tiny":
            grey = im.convert("L")
            gsrc = write(name + ".l", pixels(grey))
            for s in SIGMAS + [WIDE_SIGMA]:
                case("blur", f32(s), gsrc, grey, grey.filter(ImageFilter.GaussianBlur(radius=f32(s))))

    # Every colour once: the per-pixel operations checked over their whole domain (CRCs only).
    big = all_rgb()
    for op in ("brightness", "contrast", "saturation"):  # a negative factor: Blend.c's other branch
        fn = {"brightness": F.adjust_brightness, "contrast": F.adjust_contrast, "saturation": F.adjust_saturation}[op]
        case(op, f32(-0.5), "allrgb", big, fn(big, f32(-0.5)))
    for op, factor, fn in ops():
        if op in ("brightness", "contrast", "saturation") and factor not in (f32(0.3), f32(1.4), f32(2.5)):
            continue
        if op == "blur" and factor not in (f32(0.5), f32(2.0), f32(3.0)):
            continue
        case(op, factor, "allrgb", big, fn(big))

    write("cases.txt", ("\n".join(lines) + "\n").encode())
    print("%d cases written to %s" % (len(lines) - 1, OUT_REL))


if __name__ == "__main__":
    main()
