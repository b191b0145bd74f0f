"""Evaluate images distilled by another tool: any ImageFolder (FOLDER/<class>/<image>) whose class folders
are the dataset's, under the same protocol and teacher as ddkit's own sets, beside random real images.

    python examples/evaluate_folder.py path/to/distilled --data path/to/cifar10 --teacher teacher.pt --protocol rded
"""
import argparse

import ddkit

ap = argparse.ArgumentParser()
ap.add_argument("folder")
ap.add_argument("--data", required=True, help="the dataset the images were distilled from (its test split is used)")
ap.add_argument("--teacher", required=True, help="soft labels: a ddkit checkpoint or torchvision:/timm: spec")
ap.add_argument("--protocol", default="ddkit")
ap.add_argument("--epochs", type=int, default=300)
ap.add_argument("--seeds", type=int, default=3)
a = ap.parse_args()

theirs = ddkit.load_run(a.folder)   # class names must match the dataset's; a mismatch is one clear error
ipc = round(len(theirs.labels) / len(theirs.classes))
random_real = ddkit.distill(method="random", data=a.data, ipc=ipc)   # the floor every method has to clear
for name, s in (("their set", theirs), (f"random real, IPC {ipc}", random_real)):
    res = ddkit.evaluate(s, data=a.data, teacher=a.teacher, protocol=a.protocol, seeds=a.seeds, epochs=a.epochs)
    for key, r in res.items():
        print(f"{name}: {key}: {r['mean']:.2f} ± {r['std']:.2f} % (n={r['n']})")
