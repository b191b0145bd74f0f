"""One student trained by DD-Ranking 0.2.0's own soft-label trainer, for ddranking_conformance.py.

Runs in a Python environment where the `ddranking` package is installed (it needs numpy < 2, so it lives
apart from ddkit's); it imports nothing from ddkit. Inputs, written by ddranking_conformance.py:

- IMAGES: a [N, 3, H, W] tensor already normalised with the teacher's training mean and std (DD-Ranking uses
  a tensor set exactly as given);
- TEACHER_DIR/CIFAR10/ConvNet-3-BN/ckpt_best.pt: the teacher as a plain state_dict of DD-Ranking's
  ConvNet-3-BN, which DD-Ranking loads itself (strictly).

Only the glue around the package is changed, never the package:

1. CIFAR-10 comes from an ImageFolder of JPEGs (train/ and test/ with CIFAR's class names) instead of the
   torchvision pickles that DD-Ranking downloads; the replacement `get_dataset` keeps its return values and
   honours `custom_val_trans` for the test set the soft-label runs are tested on, as DD-Ranking's does.
2. The test set is normalised with the teacher's mean and std (`custom_val_trans`), so that teacher, training
   tensors and test images are in one space (DD-Ranking's own CIFAR-10 constants have other std values).
3. The student's seed is fixed (DD-Ranking's `set_seed` with a number instead of the clock).
4. The soft-label step is called directly at a fixed lr (`_compute_soft_label_metrics_helper`): the full
   `compute_metrics` also needs a full-data accuracy DD-Ranking has no cached value for at CIFAR-10.
5. Each test accuracy is recorded (DD-Ranking keeps only the best); when the epoch count is not a multiple
   of the test interval the final student is tested once more.

    python ddranking_driver.py --images images.pt --teacher-dir T --data CIFAR10_ROOT --mean M M M --std S S S \
        --seed 0 --epochs 300 --out student.json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from torchvision import datasets, transforms

import ddranking.metrics.soft_label as sl
from ddranking.metrics import LabelRobustScoreSoft
from ddranking.utils.misc import set_seed

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def image_folder_dataset(dataset, data_path, im_size, use_zca, custom_val_trans, device):
    """DD-Ranking's get_dataset for CIFAR-10 (same transform, same return tuple), read from an ImageFolder."""
    if dataset != "CIFAR10" or use_zca:
        raise SystemExit("ddranking_driver.py: only CIFAR10 without ZCA is wired")
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]   # DD-Ranking's CIFAR-10 constants
    own = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])
    train = datasets.ImageFolder(os.path.join(data_path, "train"), transform=own)
    test_real = datasets.ImageFolder(os.path.join(data_path, "test"), transform=own)
    test_syn = datasets.ImageFolder(os.path.join(data_path, "test"), transform=custom_val_trans or own)
    if train.classes != CIFAR10 or test_syn.classes != CIFAR10:
        raise SystemExit(f"ddranking_driver.py: {data_path} does not hold CIFAR-10's classes in CIFAR order")
    identity = {c: c for c in range(10)}
    return 3, tuple(im_size or (32, 32)), mean, std, 10, train, test_real, test_syn, identity, dict(identity)


def write_json(obj, path: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--teacher-dir", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--mean", type=float, nargs=3, required=True)
    ap.add_argument("--std", type=float, nargs=3, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=20.0)
    ap.add_argument("--cutmix-beta", type=float, default=1.0)
    ap.add_argument("--test-interval", type=int, default=20)
    ap.add_argument("--check-teacher", action="store_true", help="also test the teacher as DD-Ranking loaded it")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.time()

    sl.get_dataset = image_folder_dataset
    images = torch.load(a.images, weights_only=True).float()
    test_view = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=a.mean, std=a.std)])
    ev = LabelRobustScoreSoft(
        dataset="CIFAR10", real_data_path=a.data, ipc=len(images) // 10, model_name="ConvNet-3-BN",
        soft_label_criterion="kl", loss_fn_kwargs={"temperature": a.temperature, "scale_loss": False},
        data_aug_func="cutmix", aug_params={"beta": a.cutmix_beta}, soft_label_mode="M",
        optimizer="adamw", lr_scheduler="cosine", weight_decay=a.weight_decay, num_eval=1, num_epochs=a.epochs,
        im_size=(32, 32), use_zca=False, random_data_format="image", syn_batch_size=a.batch_size,
        real_batch_size=a.batch_size, save_path=os.path.join(os.path.dirname(os.path.abspath(a.out)), "unused.csv"),
        num_workers=0, teacher_dir=a.teacher_dir, teacher_model_names=["ConvNet-3-BN"],
        custom_val_trans=test_view, device="cpu", dist=False)
    interval = min(a.test_interval, a.epochs)
    ev.test_interval = interval

    out = {"seed": a.seed, "epochs": a.epochs, "lr": a.lr, "test_interval": interval}
    if a.check_teacher:
        out["teacher_acc"] = sl.validate(model=ev.teacher_models[0], loader=ev.test_loader_syn,
                                         class_map=ev.class_map, device="cpu")

    tests, students = [], []
    validate, build = sl.validate, sl.build_model

    def recording_validate(*args, **kwargs):
        acc = validate(*args, **kwargs)
        tests.append([interval * (len(tests) + 1), round(float(acc), 4)])
        return acc

    def capturing_build(*args, **kwargs):
        students.append(build(*args, **kwargs))
        return students[-1]

    sl.validate, sl.build_model = recording_validate, capturing_build
    set_seed(a.seed)                      # torch, numpy (CutMix's boxes) and random; DD-Ranking's own helper
    t1 = time.time()
    best, lr = ev._compute_soft_label_metrics_helper(image_tensor=images, image_path=None, soft_labels=None,
                                                     lr=a.lr, hyper_param_search=False)
    if not tests or tests[-1][0] != a.epochs:   # the final student was not tested by DD-Ranking's loop
        final = validate(model=students[-1], loader=ev.test_loader_syn, class_map=ev.class_map, device="cpu")
        tests.append([a.epochs, round(float(final), 4)])
    out.update(final_acc=tests[-1][1], best_acc=round(float(best), 4), tests=tests,
               train_s=round(time.time() - t1, 1), wall_s=round(time.time() - t0, 1))
    write_json(out, a.out)
    print(f"RESULT seed {a.seed}: final {out['final_acc']:.2f} %, DD-Ranking's best {out['best_acc']:.2f} %, "
          f"{out['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
