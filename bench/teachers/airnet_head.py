"""Is AirNet's global max-pool why its soft labels teach worse than ConvNet-3's? A cheap probe without training
a new teacher: keep the airnet teacher's features frozen and re-fit its linear head on them, once on the
max-pooled features (the control: the re-fit alone) and once on the average-pooled ones (an `airnet_avg`
teacher). The fit is the teacher recipe's loss (cross-entropy, label smoothing 0.2) on every training image
and its mirror, full batch, L-BFGS.

    python bench/teachers/airnet_head.py [--teacher bench/teacher_airnet_cifar10.pt] [--out bench/teachers/results/cifar10_strong/heads]

Writes OUT/airnet_max.pt, OUT/airnet_avg.pt (ddkit checkpoints) and OUT/heads.json (their test accuracy).
Students then learn from each with `ddkit evaluate COPY_OF_RUN --teacher OUT/airnet_avg.pt ...`.
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ddkit.data import load_splits
from ddkit.models import build_model
from ddkit.teacher import checkpoint, load_checkpoint
from ddkit.utils import save_torch


@torch.no_grad()
def pooled(model, data, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(max-pooled, mean-pooled) final features of every image of `data`, eval mode."""
    mx, av = [], []
    for i in range(0, len(data.labels), 500):
        x = data.normalize(data.images[i:i + 500])
        f = model.features(F.gelu(model.whiten(x.flip(3) if flip else x)))
        mx.append(f.amax((2, 3)))
        av.append(f.mean((2, 3)))
    return torch.cat(mx), torch.cat(av)


def fit_head(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Bias-free head weight W, logits = feats @ W.T / 9 (AirNet's scaling), fitted by full-batch L-BFGS."""
    w = torch.zeros(num_classes, feats.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(feats @ w.T / 9, labels, label_smoothing=0.2)
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="bench/teacher_airnet_cifar10.pt")
    ap.add_argument("--data", default="../shared/datasets/cifar10")
    ap.add_argument("--out", default="bench/teachers/results/cifar10_strong/heads")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, ck = load_checkpoint(a.teacher, arch="airnet")
    train, test = load_splits(a.data)
    (tr_max, tr_avg), (tf_max, tf_avg) = pooled(model, train, False), pooled(model, train, True)
    te_max, te_avg = pooled(model, test, False)
    labels = torch.cat([train.labels, train.labels])
    result = {"teacher": a.teacher, "teacher_test_acc": ck.get("test_acc"),
              "fit": "cross-entropy, label smoothing 0.2, train images + mirrors, full-batch L-BFGS (300 iterations)"}
    for pool, tr, tf, te in (("max", tr_max, tf_max, te_max), ("avg", tr_avg, tf_avg, te_avg)):
        w = fit_head(torch.cat([tr, tf]), labels, train.num_classes)
        acc = ((te @ w.T).argmax(1) == test.labels).float().mean().item()
        arch = "airnet" if pool == "max" else "airnet_avg"
        head = build_model(arch, train.num_classes, train.image_size)
        head.load_state_dict({**model.state_dict(), "head.weight": w})
        save_torch(checkpoint(head, arch, train.classes, train.image_size, ck["mean"], ck["std"],
                              recipe={}, test_acc=acc, head_refit_from=a.teacher), out / f"airnet_{pool}.pt")
        result[f"{pool}_pool_test_acc"] = round(acc, 4)
        print(f"{pool}-pool head: test {acc:.4f}", flush=True)
    (out / "heads.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
