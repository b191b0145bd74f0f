"""Use a torchvision model as the teacher: freeze it into a ddkit checkpoint with your dataset's class names,
distil with RDED, and train students with its soft labels under RDED's protocol.

    python examples/torchvision_teacher.py --data path/to/imagenet --weights resnet18-f37072fd.pth

Without --weights the weights come from torch hub's cache (or its download, where the internet is reachable).
The model's outputs must match the dataset's classes (ImageNet-1K: 1,000).
"""
import argparse

import ddkit

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--model", default="torchvision:resnet18")
ap.add_argument("--weights", help="a state dict of the model (.pth)")
ap.add_argument("--image-size", type=int, default=224)
ap.add_argument("--ipc", type=int, default=10)
ap.add_argument("--epochs", type=int, default=300, help="student epochs")
ap.add_argument("--out", default="runs/example_rded")
a = ap.parse_args()

teacher = ddkit.teacher(data=a.data, import_spec=a.model, weights=a.weights, image_size=a.image_size,
                        out=f"{a.out}_teacher.pt")
run = ddkit.distill(method="rded", data=a.data, teacher=teacher, ipc=a.ipc, image_size=a.image_size,
                    out=a.out, overwrite=True)
for key, r in ddkit.evaluate(run, protocol="rded", seeds=1, epochs=a.epochs).items():
    print(f"{key}: {r['mean']:.2f} % (n={r['n']})")
