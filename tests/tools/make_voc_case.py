#!/usr/bin/python3
"""make_voc_case.py OUT [--seed S] [--images N] — a small synthetic Pascal VOC tree for the
moco-voc-eval tool tests, with detections to score.

Writes OUT/VOC2007/Annotations/<id>.xml (VOC's layout: <object> with name, pose, truncated,
difficult, bndbox; persons carry <part> boxes, which must not count; some images have no objects),
OUT/VOC2007/ImageSets/Main/test.txt and OUT/results/<class>.txt in the form detectron2's
evaluator writes them ("image_id score xmin ymin xmax ymax", score with 3 decimals, coordinates with
one). Detections are jittered copies of ground-truth boxes (some near the IoU thresholds), duplicates,
hits on difficult objects and pure false positives, with scores drawn from a small set so that ties
are common. Every class has at least one non-difficult object. Deterministic for a seed."""
import argparse
import os
import random

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
           "train", "tvmonitor"]


def random_box(rng, width, height):
    w = rng.randint(8, width // 2)
    h = rng.randint(8, height // 2)
    x = rng.randint(1, width - w)
    y = rng.randint(1, height - h)
    return [x, y, x + w - 1, y + h - 1]


def jitter(rng, box, amount):
    w = box[2] - box[0] + 1
    h = box[3] - box[1] + 1
    d = [rng.uniform(-amount, amount) * s for s in (w, h, w, h)]
    out = [box[k] + d[k] for k in range(4)]
    out[2] = max(out[2], out[0])
    out[3] = max(out[3], out[1])
    return out


def write_xml(path, image_id, width, height, objects, rng):
    lines = ["<annotation>", "\t<folder>VOC2007</folder>", "\t<filename>%s.jpg</filename>" % image_id,
             "\t<size>", "\t\t<width>%d</width>" % width, "\t\t<height>%d</height>" % height,
             "\t\t<depth>3</depth>", "\t</size>", "\t<segmented>0</segmented>"]
    for cls, difficult, box in objects:
        lines += ["\t<object>", "\t\t<name>%s</name>" % cls, "\t\t<pose>Unspecified</pose>",
                  "\t\t<truncated>%d</truncated>" % rng.randint(0, 1), "\t\t<difficult>%d</difficult>" % difficult,
                  "\t\t<bndbox>"]
        lines += ["\t\t\t<%s>%d</%s>" % (k, v, k) for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)]
        lines += ["\t\t</bndbox>"]
        if cls == "person":  # parts have names and boxes of their own, nested deeper
            lines += ["\t\t<part>", "\t\t\t<name>head</name>", "\t\t\t<bndbox>",
                      "\t\t\t\t<xmin>%d</xmin><ymin>%d</ymin>" % (box[0], box[1]),
                      "\t\t\t\t<xmax>%d</xmax><ymax>%d</ymax>" % (box[0] + 3, box[1] + 3),
                      "\t\t\t</bndbox>", "\t\t</part>"]
        lines += ["\t</object>"]
    lines += ["</annotation>", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--images", type=int, default=60)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = os.path.join(args.out, "VOC2007")
    for d in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)

    ids = ["%06d" % (2 * i + 1) for i in range(args.images)]
    gt = {}
    for n, image_id in enumerate(ids):
        width, height = rng.randint(120, 500), rng.randint(120, 500)
        objects = []
        if n < len(CLASSES):  # every class gets one positive
            objects.append((CLASSES[n], 0, random_box(rng, width, height)))
        if rng.random() > 0.1:  # some images have no objects at all
            for _ in range(rng.randint(0, 4)):
                objects.append((rng.choice(CLASSES), int(rng.random() < 0.15), random_box(rng, width, height)))
        gt[image_id] = (width, height, objects)
        write_xml(os.path.join(root, "Annotations", image_id + ".xml"), image_id, width, height, objects, rng)
    with open(os.path.join(root, "ImageSets/Main/test.txt"), "w") as f:
        f.write("".join(i + "\n" for i in ids))

    scores = [round(rng.random(), 3) for _ in range(40)]  # few values: many ties
    dets = {c: [] for c in CLASSES}
    for image_id in ids:
        width, height, objects = gt[image_id]
        for cls, difficult, box in objects:
            if rng.random() < 0.8:
                dets[cls].append((image_id, rng.choice(scores), jitter(rng, box, rng.choice((0.02, 0.08, 0.15, 0.3)))))
            if rng.random() < 0.25:  # a duplicate: a false positive once the box is taken
                dets[cls].append((image_id, rng.choice(scores), jitter(rng, box, 0.05)))
        for _ in range(rng.randint(0, 2)):  # false positives anywhere
            dets[rng.choice(CLASSES)].append((image_id, rng.choice(scores), random_box(rng, width, height)))
    dets["sofa"] = []  # a class with no detections at all
    for cls in CLASSES:
        # in image order, as detectron2 processes images, and as its result files hold them
        lines = ["%s %.3f %.1f %.1f %.1f %.1f" % (i, s, b[0], b[1], b[2], b[3]) for i, s, b in dets[cls]]
        with open(os.path.join(args.out, "results", cls + ".txt"), "w") as f:
            f.write("\n".join(lines))


main()
