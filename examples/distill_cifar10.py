"""Distil CIFAR-10 to 10 images per class with E²D and train students on the set, in four calls.

    python examples/distill_cifar10.py --data path/to/cifar10            # ImageFolder with train/ and test/
    python examples/distill_cifar10.py                                   # torchvision's CIFAR-10 download

Defaults are a small budget (a few minutes on a GPU, about an hour on a laptop CPU): a 12-epoch ConvNet-3
teacher, E²D at 50 iterations, one student of 300 epochs. Pass larger numbers for the full recipe.
"""
import argparse

import ddkit

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="cifar10")
ap.add_argument("--ipc", type=int, default=10)
ap.add_argument("--teacher-epochs", type=int, default=12)
ap.add_argument("--iterations", type=int, default=50)
ap.add_argument("--epochs", type=int, default=300, help="student epochs")
ap.add_argument("--seeds", type=int, default=1)
ap.add_argument("--out", default="runs/example_e2d")
a = ap.parse_args()

teacher = ddkit.teacher(data=a.data, arch="convnet3", epochs=a.teacher_epochs)   # cached after the first run
print(f"teacher: {teacher.test_acc:.2f} % test accuracy ({teacher.path})")
run = ddkit.distill(method="e2d", data=a.data, teacher=teacher, ipc=a.ipc, iterations=a.iterations,
                    out=a.out, overwrite=True)
print(run)
for key, r in ddkit.evaluate(run, seeds=a.seeds, epochs=a.epochs).items():
    print(f"{key}: {r['mean']:.2f} ± {r['std']:.2f} % (n={r['n']})")
