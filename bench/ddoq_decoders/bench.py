"""Time per generated image of DDOQ's decoders (`vae`, `sd`, `dit` noised, `dit` inverted).

By default every model is a tiny random-weight one built from a config (tests/tiny_diffusion.py: a 16-px
Stable Diffusion with an 8/16-channel UNet, a one-layer 16-px DiT, an 8-channel VAE): the numbers measure
ddkit's loop and the libraries' overhead on this CPU, not what a real model costs. Pass --sd-model /
--dit-model (folders or cached Hugging Face ids) and --device cuda to time real models (Stable Diffusion v1.5
at 512 px, DiT-XL/2 at 256 px); --vae for the `vae` encoder's model.

Per decoder and repeat, `DDOQ.run` on one class group of a generated photo folder (--classes classes of
--per-class images each) is timed end to end (latents of every real image, k-means, generation, resize) and
divided by the images it makes; `generate_s_per_image` times the decoder's generation alone on the same
centres. Results go to --out as JSON after every measurement (a rerun redoes only what is missing).

    OMP_NUM_THREADS=1 nice -n 10 python bench/ddoq_decoders/bench.py --out bench/ddoq_decoders/cpu_tiny.json
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))   # the tiny model builders and the photo folder maker

from ddkit.data import load_data  # noqa: E402
from ddkit.methods import Context, build_method, diffusion  # noqa: E402


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "cpu_tiny.json"))
    p.add_argument("--sd-model", help="Stable Diffusion folder or cached HF id (default: a tiny random one)")
    p.add_argument("--dit-model", help="DiT folder or cached HF id (default: a tiny random one)")
    p.add_argument("--vae", help="AutoencoderKL folder or cached HF id for decode=encoder (default: tiny)")
    p.add_argument("--class-map", help="the DiT's class list (default: one written for the folder's classes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | fp16 | bf16 (half precision on CUDA only)")
    p.add_argument("--ipc", type=int, default=4)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="px of the generated photo folder (the output size)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decoders", nargs="+", default=["vae", "sd", "dit_noised", "dit_inverted"])
    return p.parse_args()


def main():
    args = parse()
    from conftest import make_folder
    from tiny_diffusion import _vae, make_dit, make_sd
    tmp = Path(tempfile.mkdtemp(prefix="ddoq-bench-"))
    names = [f"class{i}" for i in range(args.classes)]
    make_folder(tmp / "data", classes=names, per_class=args.per_class, size=args.size)
    sd = args.sd_model or str(make_sd(tmp / "sd"))
    dit = args.dit_model or str(make_dit(tmp / "dit", num_classes=args.classes))
    vae = args.vae
    if not vae:
        vae = str(tmp / "vae")
        _vae().save_pretrained(vae)
    class_map = args.class_map or str(tmp / "classes.txt")
    if not args.class_map:
        Path(class_map).write_text("\n".join(names) + "\n")
    common = {"steps": str(args.steps), "dtype": args.dtype, "sd_model": sd, "dit_model": dit,
              "class_map": class_map}
    settings = {"vae": {"encoder": "vae", "vae": vae},
                "sd": {**common, "decode": "sd"},
                "dit_noised": {**common, "decode": "dit"},
                "dit_inverted": {**common, "decode": "dit", "dit_start": "inverted"}}
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result["setup"] = {
        "models": {"sd": args.sd_model or "tiny random (tests/tiny_diffusion.py)",
                   "dit": args.dit_model or "tiny random (tests/tiny_diffusion.py)",
                   "vae": args.vae or "tiny random (tests/tiny_diffusion.py)"},
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(), "ipc": args.ipc, "classes": args.classes,
        "real_per_class": args.per_class, "image_px": args.size, "steps": args.steps,
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv])}
    train = load_data(str(tmp / "data"))
    dev = torch.device(args.device)
    for name in args.decoders:
        method = build_method("ddoq", settings[name])
        runs, gens = [], []
        for r in range(args.repeats + 1):   # the first is a warm-up (kernel selection, caches): not counted
            ctx = Context(train, None, args.ipc, dev, torch.Generator().manual_seed(r), False)
            t0 = time.perf_counter()
            res = method.run(ctx, list(range(args.classes)))
            sync(dev)
            run_s = (time.perf_counter() - t0) / len(res.labels)
            gen_s = time_generate(method, ctx, dev) if method.generative else None
            if r:
                runs.append(run_s)
                gens.append(gen_s)
        result[name] = {"run_s_per_image": round(statistics.median(runs), 4), "runs": [round(v, 4) for v in runs],
                        "generate_s_per_image": round(statistics.median(gens), 4) if gens[0] else None,
                        "n": args.repeats, "resolution": res.info.get("resolution", args.size),
                        "dtype": res.info.get("dtype", "float32")}
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(name, result[name], flush=True)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_generate(method, ctx, dev) -> float:
    """Generation alone: one batch of IPC latents of the model's shape (the centres' shape) for class 0."""
    dec = diffusion.decoder(method.cfg)
    lat = dec.latents(next(iter(ctx.train.batches(ctx.train.class_indices(0)[:ctx.ipc], ctx.ipc))), 0,
                      torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    dec.generate(lat, 0, torch.Generator().manual_seed(0))
    sync(dev)
    return (time.perf_counter() - t0) / len(lat)


if __name__ == "__main__":
    main()
