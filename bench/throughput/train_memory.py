"""Peak memory of one training step against ddkit.models.train_bytes's estimate (what `ddkit select` sizes its
loss proxy's batch with, and what `ddkit teacher` refuses a model by).

    OMP_NUM_THREADS=1 python bench/throughput/train_memory.py   # CPU, ~1 min; JSON in bench/throughput/results/train_memory.json

Each case runs in its own process: RSS growth (ru_maxrss) over two SGD steps at the given batch, less the
gradients and momentum, divided by the batch, beside the estimate per image.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CASES = [("convnet3", 224, 8), ("resnet18", 224, 16), ("convnet3", 32, 256)]
CLASSES = 1000
CHILD = """
import json, resource, sys, torch
from ddkit.models import build_model, train_bytes
from ddkit.utils import tune_malloc
tune_malloc()
arch, size, batch, classes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = build_model(arch, classes, size)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
for _ in range(2):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
per_image, fixed = train_bytes(arch, classes, size)
state = 2 * sum(p.numel() for p in model.parameters()) * 4   # gradients and momentum
print(json.dumps({"arch": arch, "image_size": size, "batch": batch, "measured_mb_per_image":
                  round((grown - state) / batch / 1e6, 1), "estimated_mb_per_image": round(per_image / 1e6, 1)}))
"""


def main() -> None:
    rows = [json.loads(subprocess.run([sys.executable, "-c", CHILD, arch, str(size), str(batch), str(CLASSES)],
                                      capture_output=True, text=True, check=True).stdout)
            for arch, size, batch in CASES]
    out = Path(__file__).resolve().parent / "results" / "train_memory.json"
    out.write_text(json.dumps({"command": "OMP_NUM_THREADS=1 python bench/train_memory.py", "rows": rows}, indent=2)
                   + "\n")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
