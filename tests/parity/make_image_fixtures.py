#!/usr/bin/python3
"""Write tests/fixtures/image/: what PIL 9.4 gives for resizing and decoding, for test_resample and
test_image to match byte for byte.

Run from anywhere with Debian's python3-pil 9.4 and numpy:  /usr/bin/python3 tests/parity/make_image_fixtures.py
It reads the photos in ../shared/data/photos (relative to the repository root) and writes:

  resample.txt   one case a line:  SRC SH SW C DH DW FILTER X0 Y0 X1 Y1 EXPECTED
                 SRC is a raw HWC u8 file written here, or a photo the test decodes (to C channels)
                 first; the box is in source pixels (repr() of a Python float, which the C test
                 reads with strtod: PIL then turns it into a C float, as resample() does);
                 EXPECTED is a raw file of DH*DW*C bytes or "crc32:XXXXXXXX" (zlib's CRC of them).
  decode.txt     one file a line:  FILE STORED H W RGB L
                 STORED is the channel count image_decode gives as stored (1 or 3); RGB and L are
                 what Image.open(FILE).convert("RGB") and convert("L") give: a raw file or crc32.
  *.jpg, *.png   small JPEGs and PNGs of every kind the decoder handles, made here with PIL or, for
                 kinds PIL cannot write (16-bit RGB, 2-bit grey, Adam7 interlacing), by hand.

All paths are relative to the repository root, where the tests run. The one expectation that is not
PIL's: a 16-bit grey PNG, which PIL opens as mode "I" and convert() clips to 0..255; image.h reduces
it to the high byte instead, so that case's expectations are the high byte (computed with numpy).
"""
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

TOP = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT_REL = "tests/fixtures/image"
OUT = os.path.join(TOP, OUT_REL)
PHOTOS_REL = "../shared/data/photos"
PHOTOS = os.path.normpath(os.path.join(TOP, PHOTOS_REL))

FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
MODE_OF_CHANNELS = {1: "L", 2: "La", 3: "RGB", 4: "RGBX"}  # La, RGBX: resampled band by band


def rel(name):
    return f"{OUT_REL}/{name}"


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    return rel(name)


def crc(data):
    return "crc32:%08x" % (zlib.crc32(data) & 0xFFFFFFFF)


def pixels(im):
    """HWC bytes of a PIL image, as image.h lays them out."""
    return np.asarray(im).astype(np.uint8).tobytes()


# ---- resampling ----

def resample_cases():
    rng = np.random.RandomState(20240601)
    chelsea = Image.open(os.path.join(PHOTOS, "chelsea.png")).convert("RGB")
    crop = chelsea.crop((200, 80, 237, 103))  # 37x23, the cat's face
    grey = Image.open(os.path.join(PHOTOS, "brick.png")).convert("L").crop((100, 50, 164, 98))  # 64x48
    noise = Image.fromarray(rng.randint(0, 256, (40, 30, 3)).astype(np.uint8), "RGB")  # 30x40
    la = Image.frombytes("La", (17, 13), rng.randint(0, 256, (13, 17, 2)).astype(np.uint8).tobytes())
    rgbx = Image.frombytes("RGBX", (19, 11), rng.randint(0, 256, (11, 19, 4)).astype(np.uint8).tobytes())
    sources = [
        ("src_chelsea_37x23.rgb", crop, 3),
        ("src_brick_64x48.l", grey, 1),
        ("src_noise_30x40.rgb", noise, 3),
        ("src_noise_17x13.la", la, 2),
        ("src_noise_19x11.rgbx", rgbx, 4),
    ]
    # (source index, (dw, dh), box or None, filters)
    every = list(FILTERS)
    plans = [
        (0, (20, 13), None, every),                      # shrink by non-integer factors
        (0, (9, 7), None, every),
        (0, (80, 50), None, every),                      # enlarge
        (0, (37, 11), None, every),                      # width unchanged: no horizontal pass
        (0, (19, 23), None, every),                      # height unchanged: no vertical pass
        (0, (37, 23), (1.5, 0.5, 36.5, 22.5), every),    # size unchanged, fractional box
        (0, (24, 24), (3.3, 2.7, 30.9, 20.1), every),    # box crop with fractional corners
        (0, (41, 37), (0.5, 0.25, 10.75, 9.5), every),   # enlarge a small box
        (0, (20, 10), (4, 3, 24, 13), ["bilinear"]),     # integral box of the output size: a crop
        (0, (10, 5), (4, 3, 24, 13), ["bilinear", "box"]),
        (0, (37, 23), (0, 0, 37, 23), ["bilinear"]),     # nothing to do: a copy
        (1, (25, 17), None, every),
        (1, (1, 1), None, every),                        # everything into one pixel
        (1, (3, 2), None, every),
        (1, (100, 20), None, every),                     # enlarge one axis, shrink the other
        (1, (64, 30), (0, 7.25, 64, 40.5), every),
        (2, (13, 29), None, every),
        (2, (45, 61), None, ["lanczos", "bicubic"]),     # negative lobes: clamping at 0 and 255
        (2, (3, 4), (5, 5, 5, 10), ["bilinear"]),        # a box of zero width (PIL allows it)
        (2, (30, 40), (0.1, 0.1, 29.9, 39.9), ["bicubic"]),
        (3, (7, 9), None, ["bilinear", "lanczos"]),      # 2 channels
        (3, (31, 20), (1.25, 0.5, 16.0, 12.75), ["bicubic"]),
        (4, (8, 5), None, ["bilinear", "hamming"]),      # 4 channels
        (4, (40, 23), (0.5, 0.5, 18.5, 10.5), ["lanczos"]),
    ]
    lines = []
    for i, (name, im, c) in enumerate(sources):
        write(name, pixels(im))
    n = 0
    for si, (dw, dh), box, filters in plans:
        name, im, c = sources[si]
        for fname in filters:
            out = im.resize((dw, dh), FILTERS[fname], box)
            expected = write("r%02d_%s.raw" % (n, fname), pixels(out))
            b = box if box is not None else (0, 0, im.width, im.height)
            lines.append("%s %d %d %d %d %d %s %s %s %s %s %s" % (
                rel(name), im.height, im.width, c, dh, dw, fname,
                *(repr(float(v)) for v in b), expected))
            n += 1
    # Whole photos as a training pipeline resizes them; expectations as CRCs to stay small.
    for photo, c, (dw, dh), box, fname in [
        ("china.jpg", 3, (383, 256), None, "bilinear"),         # Resize(256) of 640x427
        ("astronaut.png", 3, (256, 256), None, "bilinear"),
        ("chelsea.png", 3, (224, 224), (37.25, 12.5, 301.75, 287.0), "bilinear"),  # RandomResizedCrop
        ("hubble_deep_field.jpg", 3, (293, 256), None, "bicubic"),
        ("brick.png", 1, (224, 224), (100.5, 20.0, 400.0, 319.5), "bilinear"),
        ("rocket.jpg", 1, (100, 67), None, "lanczos"),
    ]:
        im = Image.open(os.path.join(PHOTOS, photo)).convert(MODE_OF_CHANNELS[c])
        out = im.resize((dw, dh), FILTERS[fname], box)
        b = box if box is not None else (0, 0, im.width, im.height)
        lines.append("%s/%s %d %d %d %d %d %s %s %s %s %s %s" % (
            PHOTOS_REL, photo, im.height, im.width, c, dh, dw, fname,
            *(repr(float(v)) for v in b), crc(pixels(out))))
    return lines


# ---- PNGs written by hand: the kinds PIL cannot write ----

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def pack_rows(a, depth):
    """PNG scanlines (filter type 0) of an (h, w, samples) array of sample values."""
    out = bytearray()
    for row in a:
        out.append(0)
        flat = row.reshape(-1)
        if depth == 16:
            out += flat.astype(">u2").tobytes()
        elif depth == 8:
            out += flat.astype(np.uint8).tobytes()
        else:
            per = 8 // depth
            for i in range(0, len(flat), per):
                byte = 0
                for j in range(per):
                    v = int(flat[i + j]) if i + j < len(flat) else 0
                    byte |= v << (8 - depth * (j + 1))
                out.append(byte)
    return bytes(out)


def png_bytes(a, depth, color_type, interlace=False, palette=None, trns=None):
    h, w = a.shape[:2]
    if a.ndim == 2:
        a = a[:, :, None]
    if interlace:
        raw = b"".join(pack_rows(a[y0::dy, x0::dx], depth) for x0, y0, dx, dy in ADAM7
                       if a[y0::dy, x0::dx].size)
    else:
        raw = pack_rows(a, depth)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace)))
    if palette is not None:
        out += chunk(b"PLTE", bytes(palette))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


# ---- decoding ----

def stored_channels(data):
    """What image_decode gives with channels = 0: 1 for a grey JPEG and for a PNG without the
    colour bit (grey, grey+alpha, at any depth; PIL calls a 16-bit grey+alpha PNG "RGBA"), else 3."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return 3 if data[25] & 2 else 1
    return 1 if Image.open(io.BytesIO(data)).mode == "L" else 3


def decode_cases():
    rng = np.random.RandomState(7)
    chelsea = Image.open(os.path.join(PHOTOS, "chelsea.png")).convert("RGB")
    small = chelsea.crop((180, 60, 228, 92))  # 48x32
    odd = chelsea.crop((150, 100, 187, 123))  # 37x23: partial MCUs at the edges
    grey = Image.open(os.path.join(PHOTOS, "gravel.png")).convert("L").crop((0, 0, 40, 30))
    files = []  # (name, bytes, expected (rgb, l) or None to ask PIL)

    def jpeg(name, im, **kw):
        buf = io.BytesIO()
        im.save(buf, "JPEG", **kw)
        files.append((name, buf.getvalue(), None))
        return buf.getvalue()

    def png(name, im, **kw):
        buf = io.BytesIO()
        im.save(buf, "PNG", **kw)
        files.append((name, buf.getvalue(), None))

    base = jpeg("q90_420.jpg", small, quality=90)
    jpeg("q75_444.jpg", small, quality=75, subsampling=0)
    jpeg("q95_422.jpg", odd, quality=95, subsampling=1)
    jpeg("odd_420.jpg", odd, quality=85)
    jpeg("progressive.jpg", small, quality=80, progressive=True)
    jpeg("grey.jpg", grey, quality=90)
    cmyk = jpeg("cmyk.jpg", small.convert("CMYK"), quality=90)  # PIL writes Adobe APP14, inverted
    # The same without its Adobe marker: PIL still inverts ("CMYK;I" for every 4-layer JPEG).
    i = cmyk.find(b"\xff\xee")
    n = struct.unpack(">H", cmyk[i + 2:i + 4])[0]
    files.append(("cmyk_no_adobe.jpg", cmyk[:i] + cmyk[i + 2 + n:], None))
    # Junk before a marker: libjpeg warns ("extraneous bytes"), PIL and image_decode carry on.
    i = base.find(b"\xff\xc4")
    files.append(("junk_before_marker.jpg", base[:i] + b"\x00\x13\x37" + base[i:], None))

    png("rgb.png", small)
    png("grey.png", grey)
    png("rgba.png", Image.fromarray(np.dstack([np.asarray(small), rng.randint(0, 256, (32, 48))]).astype(np.uint8), "RGBA"))
    png("la.png", Image.fromarray(np.dstack([np.asarray(grey), rng.randint(0, 256, (30, 40))]).astype(np.uint8), "LA"))
    png("palette.png", small.quantize(colors=37))
    png("palette_trns.png", small.quantize(colors=16), transparency=3)
    png("bilevel.png", grey.point(lambda v: 255 if v > 120 else 0).convert("1"))
    png("rgb_trns.png", small, transparency=tuple(np.asarray(small)[0, 0].tolist()))

    g16 = (rng.randint(0, 65536, (21, 26))).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(g16, "I;16").save(buf, "PNG")
    hi = (g16 >> 8).astype(np.uint8)
    # Not PIL's answer (it clips mode "I" to 0..255): image.h's high byte, replicated for RGB.
    files.append(("grey16.png", buf.getvalue(), (np.dstack([hi, hi, hi]).tobytes(), hi.tobytes())))
    rgb16 = rng.randint(0, 65536, (19, 23, 3))
    files.append(("rgb16.png", png_bytes(rgb16, 16, 2), None))
    files.append(("rgba16.png", png_bytes(rng.randint(0, 65536, (9, 14, 4)), 16, 6), None))
    files.append(("la16.png", png_bytes(rng.randint(0, 65536, (11, 10, 2)), 16, 4), None))
    files.append(("grey2.png", png_bytes(rng.randint(0, 4, (13, 11)), 2, 0), None))
    files.append(("grey4.png", png_bytes(rng.randint(0, 16, (12, 9)), 4, 0), None))
    pal = rng.randint(0, 256, 16 * 3).tolist()
    files.append(("palette4.png", png_bytes(rng.randint(0, 16, (10, 15)), 4, 3, palette=pal), None))
    files.append(("interlaced_rgb.png", png_bytes(np.asarray(odd).astype(int), 8, 2, interlace=True), None))
    files.append(("interlaced_grey1.png", png_bytes(rng.randint(0, 2, (17, 19)), 1, 0, interlace=True), None))
    files.append(("interlaced_pal2.png", png_bytes(rng.randint(0, 4, (9, 13)), 2, 3, interlace=True,
                                                   palette=rng.randint(0, 256, 12).tolist()), None))

    lines = []
    for name, data, expected in files:
        path = write(name, data)
        im = Image.open(io.BytesIO(data))
        stored = stored_channels(data)
        if expected is None:
            expected = (pixels(im.convert("RGB")), pixels(Image.open(io.BytesIO(data)).convert("L")))
        base = name.replace(".", "_")  # grey.jpg and grey.png both exist
        rgb = write(base + ".expect.rgb", expected[0])
        lum = write(base + ".expect.l", expected[1])
        lines.append("%s %d %d %d %s %s" % (path, stored, im.height, im.width, rgb, lum))

    # The photos themselves, expectations as CRCs.
    for photo in sorted(os.listdir(PHOTOS)):
        if not photo.endswith((".jpg", ".png")) or photo == "truncated.jpg":
            continue
        im = Image.open(os.path.join(PHOTOS, photo))
        with open(os.path.join(PHOTOS, photo), "rb") as f:
            stored = stored_channels(f.read())
        lines.append("%s/%s %d %d %d %s %s" % (
            PHOTOS_REL, photo, stored, im.height, im.width,
            crc(pixels(im.convert("RGB"))), crc(pixels(Image.open(os.path.join(PHOTOS, photo)).convert("L")))))
    return lines


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        os.remove(os.path.join(OUT, old))
    header = "# written by tests/parity/make_image_fixtures.py with PIL %s; see there for the format\n"
    import PIL
    with open(os.path.join(OUT, "resample.txt"), "w") as f:
        f.write(header % PIL.__version__)
        f.write("".join(line + "\n" for line in resample_cases()))
    with open(os.path.join(OUT, "decode.txt"), "w") as f:
        f.write(header % PIL.__version__)
        f.write("".join(line + "\n" for line in decode_cases()))
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print("wrote %d files, %d bytes, in %s" % (len(os.listdir(OUT)), total, OUT_REL))


if __name__ == "__main__":
    main()
