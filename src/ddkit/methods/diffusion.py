"""Latent-diffusion decoders for DDOQ: a class's k-means centres, taken in a diffusion model's VAE latent
space, become images by running that model from them.

`sd` is D4M's pipeline (suduo94/D4M), which DDOQ reuses: Stable Diffusion img2img started from a latent
instead of an encoded image. A real image becomes a VAE posterior sample x scaling_factor at the model's
resolution; a centre is noised by the scheduler to `strength` (no VAE encode) and denoised for the remaining
steps with the class name as prompt, classifier-free guidance and a negative prompt. diffusers'
StableDiffusionImg2ImgPipeline does exactly this when handed 4-channel latents as its `image`.

`dit` is a class-conditional DiT (DiT-XL/2 at 256 px on ImageNet's 1,000 classes) sampled with DDIM and
classifier-free guidance from the centres instead of Gaussian noise. DiTPipeline takes no starting latents,
so the loop is ddkit's own on diffusers' components. Two readings of "distilled noise initializations":
`dit_start=noised` clusters clean latents and noises each centre to `strength` (D4M's mechanism, the default),
`dit_start=inverted` clusters DDIM-inverted latents (D3HR's mechanism) and samples from the step the
inversion reached.

Models come from a local folder or a Hugging Face repo id already in the local cache: nothing is downloaded
(local_files_only), no model folder's own code runs (components are built from the library classes named
here, never trust_remote_code), and safetensors files are preferred where both kinds exist (the libraries'
default). diffusers and transformers are the optional `diffusers` extra, imported only when used.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models import import_extra
from ..utils import DDKitError

SD_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"   # Stable Diffusion v1.5 (runwayml's repo, moved)
DIT_ID = "facebook/DiT-XL-2-256"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WNID = re.compile(r"n\d{8}$")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def model_root(source: str, what: str) -> Path:
    """The model's folder: `source` itself, or its snapshot in the Hugging Face cache (never downloaded)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:  # not a repo id
        raise DDKitError(f"{what} folder {path} not found")
    hf = import_extra("huggingface_hub", "diffusers")
    from huggingface_hub import constants
    try:
        return Path(hf.snapshot_download(source, local_files_only=True))
    except Exception as e:  # not cached, or not a repo id at all
        raise DDKitError(f"no {what} {source!r}: not a local folder, and not in the Hugging Face cache "
                         f"{constants.HF_HUB_CACHE}; fetch it first (`hf download {source}`) or pass a folder") from e


def _load(cls, root: Path, sub: str, what: str):
    kw = {"low_cpu_mem_usage": False} if cls.__module__.startswith("diffusers") else {}  # no `accelerate`
    try:
        return cls.from_pretrained(root, subfolder=sub, local_files_only=True, **kw)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DDKitError(f"cannot load the {what} from {root / sub}: {_first_line(e)}") from e


def _scheduler(root: Path, name: str):
    """The model's own scheduler, or the diffusers scheduler class `name` built from the model's config."""
    diffusers = import_extra("diffusers", "diffusers")
    config_file = root / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise DDKitError(f"no scheduler config at {config_file}")
    config = json.loads(config_file.read_text())
    name = name or config.get("_class_name", "")
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise DDKitError(f"unknown diffusers scheduler {name!r} (e.g. DDIMScheduler, PNDMScheduler, "
                         f"DPMSolverMultistepScheduler, EulerDiscreteScheduler)")
    return cls.from_config(config)


# --- class names -> prompts and ImageNet class ids ---

def _key(name: str) -> str:
    return name.replace("_", " ").strip().lower()


def read_class_map(path: str) -> list[tuple[str | None, list[str]]]:
    """A class list in ImageNet's class-index order, one class a line: `WNID name[, synonym, ...]` (ImageNet's
    LOC_synset_mapping.txt) or `name[, synonym, ...]` (D4M's imagenet_classes.txt). Line i is class id i."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DDKitError(f"class map {file} not found")
    rows = []
    for line in file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        wnid, names = (head, rest) if WNID.match(head) else (None, line)
        rows.append((wnid, [n.strip() for n in names.split(",") if n.strip()] or [head]))
    if not rows:
        raise DDKitError(f"class map {file} is empty")
    return rows


def _lookup(classes: list[str], rows) -> list[int | None]:
    """Each class's line in the map: by WordNet id, else by any of its names."""
    by = {}
    for i, (wnid, names) in enumerate(rows):
        for k in ([wnid] if wnid else []) + names:
            by.setdefault(_key(k), i)
    return [by.get(_key(c)) for c in classes]


def prompt_names(classes: list[str], class_map: str = "") -> list[str]:
    """Readable class names for prompts: the map's first name where one is given, else the folder name."""
    rows = read_class_map(class_map) if class_map else []
    found = _lookup(classes, rows)
    out = []
    for c, i in zip(classes, found):
        if i is not None:
            out.append(rows[i][1][0])
        elif WNID.match(c):
            raise DDKitError(f"class {c!r} is a WordNet id, not a prompt: pass --set class_map=FILE (ImageNet's "
                             f"LOC_synset_mapping.txt) to name the classes" + (f" ({c} is not in it)" if rows else ""))
        else:
            out.append(c.replace("_", " "))
    return out


def class_ids(classes: list[str], class_map: str, id2label: dict | None, num_labels: int) -> list[int]:
    """The DiT's class id of each data class: from the class map (line number), else the model's own label
    names (model_index.json's id2label), else WordNet-id folders that are all of ImageNet's classes (sorted,
    as ImageNet numbers them). Anything else is refused: a DiT cannot be conditioned on a class it never saw."""
    if class_map:
        found = _lookup(classes, read_class_map(class_map))
        where = f"not found in the class map {class_map}"
    elif id2label:
        rows = [(None, [n.strip() for n in str(id2label[k]).split(",")]) for k in sorted(id2label, key=int)]
        found = _lookup(classes, rows)
        where = "not among the model's label names"
    elif len(classes) == num_labels and all(WNID.match(c) for c in classes):
        found, where = list(range(num_labels)), ""
    else:
        found, where = [None] * len(classes), "no class map given"
    for c, i in zip(classes, found):
        if i is None or i >= num_labels:
            raise DDKitError(f"the DiT knows {num_labels} classes and class {c!r} is not one of them ({where}): "
                             f"pass --set class_map=FILE listing the model's classes in its order (for ImageNet: "
                             f"LOC_synset_mapping.txt)")
    return found


# --- the decoders ---

class LatentDiffusion:
    """What both decoders share: the VAE at the model's resolution, precision, batching."""

    def __init__(self, vae, native: int, cfg):
        self.vae, self.cfg = vae, cfg
        self.scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.res = cfg.resolution or native
        if not 0 < cfg.strength <= 1 or int(cfg.steps * cfg.strength) < 1:
            raise DDKitError(f"strength={cfg.strength} with steps={cfg.steps} runs no denoising step: strength "
                             f"must be in (0, 1] and steps x strength at least 1")
        if self.res % self.scale:
            raise DDKitError(f"resolution={self.res} is not a multiple of the VAE's downsampling {self.scale}")
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def place(self, device: torch.device):
        """Move to the run's device in the configured precision (half precision only on CUDA)."""
        name = self.cfg.dtype if self.cfg.dtype != "auto" else ("fp16" if device.type == "cuda" else "fp32")
        if name not in DTYPES:
            raise DDKitError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
        if name != "fp32" and device.type != "cuda":
            raise DDKitError(f"dtype={name} needs a CUDA device (on {device.type} the diffusion decoders run in fp32)")
        self.device, self.dtype = device, DTYPES[name]
        for m in self.modules():
            m.to(device).eval()
            if self.dtype != torch.float32:  # (only then: diffusers warns about any dtype cast)
                m.to(self.dtype)
        return self

    def modules(self):
        return [self.vae]

    @torch.no_grad()
    def encode(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Images (uint8, or [0, 1] floats) -> VAE posterior samples x scaling_factor at the model's resolution
        (D4M's latents)."""
        x = images.to(self.device).float()
        x = x.div_(255) if images.dtype == torch.uint8 else x
        x = F.interpolate(x, size=(self.res, self.res), mode="bicubic", antialias=True).clamp_(0, 1)
        post = self.vae.encode((x * 2 - 1).to(self.dtype)).latent_dist
        return (post.sample(generator=gen) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def to_images(self, z: torch.Tensor) -> torch.Tensor:
        img = self.vae.decode((z / self.vae.config.scaling_factor).to(self.dtype)).sample
        return ((img.float() + 1) / 2).clamp_(0, 1)

    def bind(self, classes: list[str]) -> None:
        """Resolve the data's classes to what the model is conditioned on (prompts or class ids)."""

    def latents(self, images: torch.Tensor, c: int, gen: torch.Generator) -> torch.Tensor:
        """What k-means clusters for class c."""
        return self.encode(images, gen)


class StableDiffusion(LatentDiffusion):
    """D4M's img2img from latents on diffusers' StableDiffusionImg2ImgPipeline (no safety checker)."""

    def __init__(self, root: Path, cfg):
        diffusers = import_extra("diffusers", "diffusers")
        transformers = import_extra("transformers", "diffusers")
        unet = _load(diffusers.UNet2DConditionModel, root, "unet", "Stable Diffusion UNet")
        vae = _load(diffusers.AutoencoderKL, root, "vae", "Stable Diffusion VAE")
        super().__init__(vae, unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1), cfg)
        self.pipe = diffusers.StableDiffusionImg2ImgPipeline(
            vae=vae, unet=unet, scheduler=_scheduler(root, cfg.sd_scheduler),
            text_encoder=_load(transformers.CLIPTextModel, root, "text_encoder", "CLIP text encoder"),
            tokenizer=_load(transformers.CLIPTokenizer, root, "tokenizer", "CLIP tokenizer"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)
        self.prompts: list[str] = []

    def modules(self):
        return [self.pipe.vae, self.pipe.unet, self.pipe.text_encoder]

    def bind(self, classes):
        try:
            self.prompts = [self.cfg.prompt.format(name=n) for n in prompt_names(classes, self.cfg.class_map)]
        except (KeyError, IndexError) as e:
            raise DDKitError(f"prompt template {self.cfg.prompt!r} may use only {{name}}") from e

    @torch.no_grad()
    def generate(self, centres: torch.Tensor, c: int, gen: torch.Generator) -> torch.Tensor:
        k, neg = len(centres), self.cfg.negative_prompt or None
        return self.pipe(prompt=[self.prompts[c]] * k, image=centres.to(self.device, self.dtype),
                         strength=self.cfg.strength, num_inference_steps=self.cfg.steps,
                         guidance_scale=self.cfg.sd_guidance, negative_prompt=[neg] * k if neg else None,
                         generator=gen, output_type="pt").images.float().clamp_(0, 1)


class DiT(LatentDiffusion):
    """A class-conditional DiT (learned-sigma output: the first half of its channels is the noise) with DDIM."""

    def __init__(self, root: Path, cfg):
        diffusers = import_extra("diffusers", "diffusers")
        self.net = _load(diffusers.DiTTransformer2DModel, root, "transformer", "DiT transformer")
        vae = _load(diffusers.AutoencoderKL, root, "vae", "DiT VAE")
        super().__init__(vae, self.net.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1), cfg)
        native = self.net.config.sample_size * self.scale
        if self.res != native:  # its position embedding is fixed to one grid
            raise DDKitError(f"the DiT generates {native} px images only (resolution={self.res} given)")
        if cfg.dit_start not in ("noised", "inverted"):
            raise DDKitError(f"unknown dit_start {cfg.dit_start!r}; choose noised, inverted")
        self.sched = _scheduler(root, "DDIMScheduler")
        self.inverse = diffusers.DDIMInverseScheduler.from_config(self.sched.config)
        self.null = self.net.config.num_embeds_ada_norm   # the label of the unconditional branch
        index = root / "model_index.json"
        self.id2label = json.loads(index.read_text()).get("id2label") if index.is_file() else None
        self.ids: list[int] = []

    def modules(self):
        return [self.vae, self.net]

    def bind(self, classes):
        self.ids = class_ids(classes, self.cfg.class_map, self.id2label, self.null)

    def _eps(self, x, t, y, guidance):
        ch = self.net.config.in_channels
        if guidance <= 1:
            return self.net(x, timestep=t.expand(len(x)), class_labels=y).sample[:, :ch]
        out = self.net(torch.cat([x, x]), timestep=t.expand(2 * len(x)),
                       class_labels=torch.cat([y, torch.full_like(y, self.null)])).sample[:, :ch]
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    def _span(self, steps: int) -> int:
        """How many of the `steps` DDIM steps run: int(steps x strength), as img2img counts them."""
        return min(int(steps * self.cfg.strength), steps)

    @torch.no_grad()
    def latents(self, images, c, gen):
        z = self.encode(images, gen)
        if self.cfg.dit_start == "noised":
            return z
        # DDIM inversion, conditioned on the class, up to the step sampling will start from
        self.inverse.set_timesteps(self.cfg.steps, device=self.device)
        y = torch.full((len(z),), self.ids[c], device=self.device)
        x = z.to(self.dtype)
        for t in self.inverse.timesteps[:self._span(self.cfg.steps)]:
            x = self.inverse.step(self._eps(x, t, y, self.cfg.invert_guidance), t, x).prev_sample
        return x.float()

    @torch.no_grad()
    def generate(self, centres, c, gen):
        steps = self.cfg.steps
        self.sched.set_timesteps(steps, device=self.device)
        timesteps = self.sched.timesteps[steps - self._span(steps):]
        x = centres.to(self.device, self.dtype)
        if self.cfg.dit_start == "noised":   # the centre of clean latents, noised to the first step run
            noise = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(self.device, self.dtype)
            x = self.sched.add_noise(x, noise, timesteps[:1].repeat(len(x)))
        y = torch.full((len(x),), self.ids[c], device=self.device)
        for t in timesteps:
            x = self.sched.step(self._eps(x, t, y, self.cfg.dit_guidance), t, x).prev_sample
        return self.to_images(x)


_LOADED: dict[tuple, LatentDiffusion] = {}


def decoder(cfg) -> LatentDiffusion:
    """The configured latent-diffusion decoder (`cfg.decode` is sd or dit), loaded once per run: DDOQ builds it
    before any output exists, and every class group reuses it. Only the latest configuration is kept."""
    key = tuple(sorted((k, str(v)) for k, v in dataclasses.asdict(cfg).items()))
    if key not in _LOADED:
        _LOADED.clear()
        kind = cfg.decode
        source = cfg.sd_model if kind == "sd" else cfg.dit_model
        root = model_root(source, {"sd": "Stable Diffusion model", "dit": "DiT model"}[kind])
        _LOADED[key] = (StableDiffusion if kind == "sd" else DiT)(root, cfg)
    return _LOADED[key]
