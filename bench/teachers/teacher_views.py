"""How each teacher sees the students' views: accuracy, the true class's probability (tau 1 and 4) and the top
probability (tau 4) on 2,000 training and 2,000 test images, as stored (center) and under RandomResizedCrop +
flip at the `ddkit` (scale 0.5-1) and `edc` (0.08-1) students' scales. Training images show how much of
its training set a teacher has memorised; soft labels are always computed on training images. Rows with view
`spread` measure how much a teacher's labels change from view to view of one image (what a student of a few
images learns beyond the class): on the first 500 images, 8 RRC 0.5-1 views each, the mean total-variation
distance of a view's label (tau 1 and 4) from the image's mean label, and the share of views whose top class
differs from the mean label's.

    python bench/teachers/teacher_views.py --teachers bench/teacher_convnet3_cifar10.pt bench/teacher_airnet_cifar10.pt

Writes bench/teachers/results/cifar10_strong/teacher_views.json (one row per teacher, split and view).
"""
import argparse
import json
from pathlib import Path

import torch

from ddkit.augment import apply_views, draw_views
from ddkit.data import load_splits
from ddkit.teacher import load_checkpoint

VIEWS = {"center": None, "rrc50": (0.5, 1.0), "rrc08": (0.08, 1.0)}
SPREAD_IMAGES, SPREAD_VIEWS = 500, 8


def spread(z: torch.Tensor) -> dict:
    """z: logits [views, images, classes] -> how far each view's label is from the image's mean label."""
    out = {}
    for tau in (1, 4):
        p = (z / tau).softmax(2)
        out[f"view_tv_tau{tau}"] = round((p - p.mean(0)).abs().sum(2).div(2).mean().item(), 4)
    out["view_top_changes"] = round((z.argmax(2) != z.softmax(2).mean(0).argmax(1)).float().mean().item(), 4)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachers", nargs="+", required=True)
    ap.add_argument("--data", default="../shared/datasets/cifar10")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--out", default="bench/teachers/results/cifar10_strong/teacher_views.json")
    a = ap.parse_args()
    train, test = load_splits(a.data)
    g = torch.Generator().manual_seed(0)
    inputs = {}  # the same images and views for every teacher
    for split, d in (("train", train), ("test", test)):
        idx = torch.randperm(len(d.labels), generator=g)[:a.images]
        x = train.normalize(d.images[idx])
        for view, scale in VIEWS.items():
            v = draw_views("rrc", len(x), *x.shape[-2:], g, scale) if scale else None
            inputs[split, view] = (apply_views(x, v, slice(None)) if v else x, d.labels[idx])
        # own generator, so the rows above keep the images and views they had before `spread` existed
        few, gs = x[:SPREAD_IMAGES], torch.Generator().manual_seed(1)
        inputs[split, "spread"] = (torch.cat([apply_views(few, draw_views("rrc", len(few), *few.shape[-2:], gs),
                                                          slice(None)) for _ in range(SPREAD_VIEWS)]), None)
    rows = []
    for path in a.teachers:
        model, ck = load_checkpoint(path, train.classes)
        for (split, view), (x, y) in inputs.items():
            with torch.no_grad():
                z = torch.cat([model(c) for c in x.split(500)])
            row = {"teacher": path, "arch": ck["arch"], "test_acc": ck.get("test_acc"), "split": split, "view": view}
            if y is None:
                row |= spread(z.view(SPREAD_VIEWS, -1, z.shape[1]))
            else:
                p1, p4 = z.softmax(1), (z / 4).softmax(1)
                row |= {"acc": round((z.argmax(1) == y).float().mean().item(), 4),
                        "p_true_tau1": round(p1.gather(1, y[:, None]).mean().item(), 4),
                        "p_true_tau4": round(p4.gather(1, y[:, None]).mean().item(), 4),
                        "p_top_tau4": round(p4.amax(1).mean().item(), 4)}
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    Path(a.out).write_text(json.dumps({"images_per_split": a.images, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
