#!/usr/bin/python3
"""voc_reference.py DEVKIT RESULTS_PREFIX [--set test] [--metric 11point|area] [--compare REPORT]

An independent reference for moco-voc-eval's numbers, written from the devkit's description of the
metric (the voc_eval / voc_ap that detectron2's PascalVOCDetectionEvaluator carries), in numpy:
ground truth from Annotations/<id>.xml (ElementTree), detections from <prefix><class>.txt, per class
and IoU threshold k/100 (k = 50, 55, ..., 95) the precision/recall curve and its AP, then the
class means, their mean (AP), and the 0.50 and 0.75 columns (AP50, AP75), in percent.
One deliberate choice: ties in score keep their file order (a stable sort), as moco-voc-eval
documents; numpy's default argsort does not promise that.

Without --compare it prints the results as JSON. With --compare REPORT (moco-voc-eval --report) it
checks every number agrees to 1e-6 and exits 1 on the first that does not."""
import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
           "train", "tvmonitor"]


def load_objects(path):
    objects = []
    for obj in ET.parse(path).findall("object"):
        box = obj.find("bndbox")
        objects.append({"name": obj.find("name").text, "difficult": int(obj.find("difficult").text),
                        "bbox": [int(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]})
    return objects


def average_precision(rec, prec, metric):
    if metric == "11point":
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = np.max(prec[rec >= t]) if np.sum(rec >= t) > 0 else 0
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def class_ap(annotations, lines, cls, thresh, metric):
    gts, npos = {}, 0
    for image_id, objects in annotations.items():
        mine = [o for o in objects if o["name"] == cls]
        difficult = np.array([o["difficult"] for o in mine]).astype(bool)
        npos += int(np.sum(~difficult))
        gts[image_id] = {"bbox": np.array([o["bbox"] for o in mine], dtype=float).reshape(-1, 4),
                         "difficult": difficult, "taken": [False] * len(mine)}
    fields = [line.split() for line in lines if line.strip()]
    ids = [f[0] for f in fields]
    conf = np.array([float(f[1]) for f in fields])
    boxes = np.array([[float(v) for v in f[2:6]] for f in fields]).reshape(-1, 4)
    order = np.argsort(-conf, kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        g, bb = gts[ids[k]], boxes[k]
        best, jbest = -np.inf, -1
        if g["bbox"].size:
            gb = g["bbox"]
            iw = np.maximum(np.minimum(gb[:, 2], bb[2]) - np.maximum(gb[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(gb[:, 3], bb[3]) - np.maximum(gb[:, 1], bb[1]) + 1.0, 0.0)
            inter = iw * ih
            union = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + \
                (gb[:, 2] - gb[:, 0] + 1.0) * (gb[:, 3] - gb[:, 1] + 1.0) - inter
            iou = inter / union
            best, jbest = np.max(iou), int(np.argmax(iou))
        if best > thresh:
            if not g["difficult"][jbest]:
                if g["taken"][jbest]:
                    fp[d] = 1.0
                else:
                    tp[d] = 1.0
                    g["taken"][jbest] = True
        else:
            fp[d] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return average_precision(rec, prec, metric)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("devkit")
    ap.add_argument("prefix")
    ap.add_argument("--set", default="test")
    ap.add_argument("--metric", default="11point")
    ap.add_argument("--compare")
    args = ap.parse_args()
    with open(os.path.join(args.devkit, "ImageSets", "Main", args.set + ".txt")) as f:
        ids = [line.strip() for line in f if line.strip()]
    annotations = {i: load_objects(os.path.join(args.devkit, "Annotations", i + ".xml")) for i in ids}
    per_class = {}
    for cls in CLASSES:
        with open(args.prefix + cls + ".txt") as f:
            lines = f.readlines()
        per_class[cls] = [class_ap(annotations, lines, cls, k / 100.0, args.metric) * 100 for k in range(50, 100, 5)]
    column = [np.mean([per_class[c][t] for c in CLASSES]) for t in range(10)]
    ref = {"AP": float(np.mean(column)), "AP50": float(column[0]), "AP75": float(column[5]),
           "classes": {c: [float(v) for v in per_class[c]] for c in CLASSES}}
    if not args.compare:
        json.dump(ref, sys.stdout, indent=1)
        return
    with open(args.compare) as f:
        got = json.load(f)
    pairs = [(k, got[k], ref[k]) for k in ("AP", "AP50", "AP75")]
    for c in got["classes"]:
        pairs += [("%s@%d" % (c["name"], 50 + 5 * t), c["ap"][t], ref["classes"][c["name"]][t]) for t in range(10)]
    worst = max(abs(a - b) for _, a, b in pairs)
    exact = sum(a == b for _, a, b in pairs)
    for name, a, b in pairs:
        if abs(a - b) > 1e-6:
            print("%s: moco-voc-eval %.17g, reference %.17g" % (name, a, b))
            sys.exit(1)
    print("%d numbers agree (%d bit for bit), largest difference %.3g; AP %.4f AP50 %.4f AP75 %.4f"
          % (len(pairs), exact, worst, ref["AP"], ref["AP50"], ref["AP75"]))


main()
