"""DDOQ: distillation as optimal quantization. Per class, k-means (k = IPC) in an encoder's latent space;
the decoded centres are the images and each centre's cell mass (how many real samples are nearest to it)
is its loss weight at evaluation. Encoders: `pixel` (identity: centres are pixel averages), `teacher`
(penultimate features; decoded as the medoid, the real image nearest the centre), `autoencoder` (a small
conv autoencoder trained and cached per dataset), `vae` (a pretrained latent-diffusion VAE, diffusers'
AutoencoderKL: centres in its latent space, decoded by its decoder). `decode=medoid` replaces any encoder's
own decoder by the medoid, which separates where the centres sit from how they become images. A user's own
encoder is one more entry in ENCODERS: a factory (ctx, cfg) -> object with `encode(x) -> z [n, d]` and
`decode(z, x_real, z_real) -> images`.

`decode=sd` and `decode=dit` are the paper's systems (ddkit.methods.diffusion): the centres are taken in a
latent diffusion model's own VAE space (so `encoder` is not used), clustered as D4M does (MiniBatchKMeans fed
by partial_fit), and the diffusion model generates each image from its centre. They are for photos at
ImageNet scale; on 32-px data use the encoders above.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import embed, import_extra
from ..train import TrainConfig, fit
from ..utils import AT_LEAST_1, NON_NEGATIVE, UNIT, DDKitError, cache_dir, load_torch, save_torch, stable_hash
from ..progress import steps
from . import Context, Method, Output, diffusion, need_images, register


def kmeans(z: np.ndarray, k: int, restarts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres [k, d] and the final full assignment of every sample (k-means++ init, best of restarts)."""
    from sklearn.cluster import KMeans
    km = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit(z)
    centres = km.cluster_centers_.astype(np.float32)
    return centres, nearest(z, centres)


def minibatch_kmeans(z: np.ndarray, k: int, expand: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """D4M's clustering: MiniBatchKMeans(k) fed by partial_fit in chunks of expand*k samples (a last chunk
    smaller than k is left out, as D4M does); then DDOQ's full assignment pass for the weights."""
    from sklearn.cluster import MiniBatchKMeans
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=expand * k, n_init="auto")
    for i in range(0, len(z), expand * k):
        if len(z[i:i + expand * k]) >= k:
            km.partial_fit(z[i:i + expand * k])
    centres = km.cluster_centers_.astype(np.float32)
    return centres, nearest(z, centres)


def nearest(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (z ** 2).sum(1, keepdims=True) - 2 * z @ centres.T + (centres ** 2).sum(1)
    return d.argmin(1)


def quantization_error(z: np.ndarray, centres: np.ndarray, assign: np.ndarray | None = None) -> float:
    """Mean squared distance of each sample to its nearest centre (what k-means minimises)."""
    assign = nearest(z, centres) if assign is None else assign
    return float(((z - centres[assign]) ** 2).sum(1).mean())


def medoid(z, x_real, z_real):
    """The real image whose latent is nearest each centre."""
    return x_real[torch.cdist(z, z_real).argmin(1)]


class PixelCoder:
    def encode(self, x):
        return x.flatten(1)

    def decode(self, z, x_real, z_real):
        return z.view(-1, *x_real.shape[1:])


class TeacherCoder:
    def __init__(self, teacher):
        self.teacher = teacher

    def encode(self, x):
        return embed(self.teacher, x)[0]

    def decode(self, z, x_real, z_real):  # features cannot be inverted: the medoid stands in
        return medoid(z, x_real, z_real)


class AutoEncoder(nn.Module):
    """Two stride-2 convs down to a (latent_ch, H/4, W/4) code and two transposed convs back."""

    def __init__(self, latent_ch: int = 8, width: int = 64):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 4, 2, 1),
                                 nn.ReLU(), nn.Conv2d(width, latent_ch, 1))
        self.dec = nn.Sequential(nn.Conv2d(latent_ch, width, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(width, 3, 4, 2, 1))

    def forward(self, x):
        return self.dec(self.enc(x))


class AECoder:
    def __init__(self, ae: AutoEncoder, shape):
        self.ae, self.shape = ae.eval(), shape

    @torch.no_grad()
    def encode(self, x):
        return torch.cat([self.ae.enc(x[i:i + 1000]).flatten(1) for i in range(0, len(x), 1000)])

    @torch.no_grad()
    def decode(self, z, x_real, z_real):
        return self.ae.dec(z.view(len(z), -1, *self.shape))


def train_autoencoder(ctx: Context, epochs: int, latent_ch: int, seed: int) -> AECoder:
    """Train (or load from cache) the dataset's autoencoder: MSE reconstruction in normalised space."""
    train = ctx.train
    key = stable_hash([train.content_hash(), list(train.mean), epochs, latent_ch, seed])
    path = cache_dir() / "autoencoders" / f"ae_{key}.pt"
    ae = AutoEncoder(latent_ch)
    if path.is_file():
        ae.load_state_dict(load_torch(path, "autoencoder"))
    else:
        cfg = TrainConfig(epochs=epochs, batch_size=256, optimizer="adamw", lr=2e-3, weight_decay=0.0,
                          schedule="cosine", aug="none", channels_last=False, amp=ctx.amp)
        with torch.enable_grad():  # callers may be inside no_grad
            fit(_Recon(ae), train.fit_images, train.labels, train.normalize, cfg, ctx.device, seed=seed,
                desc="autoencoder", progress=ctx.progress, loss_fn=_Recon.loss)
        save_torch({k: v.cpu() for k, v in ae.state_dict().items()}, path)
    s = train.image_size // 4
    return AECoder(ae.to(ctx.device), (s, s))


class _Recon(nn.Module):
    """Wraps the autoencoder for `fit`: the 'logits' are the reconstruction, the loss is per-image MSE."""

    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, x):
        return torch.cat([self.ae(x).flatten(1), x.flatten(1)], 1)

    @staticmethod
    def loss(out, labels):
        rec, x = out.chunk(2, dim=1)
        return F.mse_loss(rec, x, reduction="none").mean(1)


class VAECoder:
    """A diffusers AutoencoderKL at the data's resolution. Latents are the posterior means, unscaled: the
    VAE's scaling_factor multiplies every distance alike, so k-means would find the same cells. Images go
    from the teacher's normalised space to the VAE's [-1, 1] and back."""

    def __init__(self, vae, mean, std, batch_size: int = 64):
        self.vae, self.batch = vae.eval(), batch_size
        dev = next(vae.parameters()).device
        self.mean, self.std = (torch.tensor(v, device=dev).view(1, -1, 1, 1) for v in (mean, std))
        self.shape = None

    @torch.no_grad()
    def encode(self, x):
        z = torch.cat([self.vae.encode((x[i:i + self.batch] * self.std + self.mean) * 2 - 1).latent_dist.mean
                       for i in range(0, len(x), self.batch)])
        self.shape = z.shape[1:]
        return z.flatten(1)

    @torch.no_grad()
    def decode(self, z, x_real, z_real):
        img = torch.cat([self.vae.decode(z[i:i + self.batch].view(-1, *self.shape)).sample
                         for i in range(0, len(z), self.batch)])
        return ((img + 1) / 2 - self.mean) / self.std


@functools.lru_cache(maxsize=1)  # loaded once per run (DDOQ checks it before any output), not per class group
def load_vae(source: str, subfolder: str = "") -> nn.Module:
    """AutoencoderKL from a local folder, or a Hugging Face repo id already in the local cache (never a
    download mid-run: fetch it beforehand, e.g. `hf download REPO`)."""
    diffusers = import_extra("diffusers", "diffusers")
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(source, subfolder=subfolder or None, local_files_only=True,
                                                      low_cpu_mem_usage=False)  # no `accelerate` needed
    except (OSError, ValueError) as e:
        raise DDKitError(f"cannot load the VAE {source!r}{f' (subfolder {subfolder})' if subfolder else ''} "
                         f"locally: {str(e).strip().splitlines()[0][:200]}") from e
    return vae.float().eval()


ENCODERS = {
    "pixel": lambda ctx, cfg: PixelCoder(),
    "teacher": lambda ctx, cfg: TeacherCoder(ctx.teacher),
    "autoencoder": lambda ctx, cfg: train_autoencoder(ctx, cfg.ae_epochs, cfg.ae_latent_ch, seed=0),
    "vae": lambda ctx, cfg: VAECoder(load_vae(cfg.vae, cfg.vae_subfolder).to(ctx.device), ctx.train.mean,
                                     ctx.train.std),
}


@register
class DDOQ(Method):
    """Weighted k-means per class in a latent space; decoded centres with their cell masses as weights."""
    name = "ddoq"

    @dataclass
    class Config:
        encoder: str = "teacher"     # pixel | teacher | autoencoder | vae
        restarts: int = 3            # k-means++ restarts (best inertia kept)
        max_samples: int = 0         # cap on real samples per class fed to k-means (0 = all)
        ae_epochs: int = 10
        ae_latent_ch: int = 8
        vae: str = ""                # encoder=vae: diffusers AutoencoderKL folder, or a cached HF repo id
        vae_subfolder: str = ""      # e.g. "vae" inside a whole diffusion-pipeline repo
        weighted: bool = True        # False: D4M-style unweighted prototypes (all weights 1)
        decode: str = "encoder"      # encoder: its own decoder | medoid: nearest real image to each centre |
        #                              sd | dit: generated by a latent diffusion model from each centre
        # decode=sd|dit (ddkit.methods.diffusion; docs/methods/ddoq.md says which value is whose)
        sd_model: str = diffusion.SD_ID     # folder, or Hugging Face repo id in the local cache
        dit_model: str = diffusion.DIT_ID
        strength: float = 0.7        # how far each centre is noised (D4M: 0.7); the last strength x steps run
        steps: int = 50              # the scheduler's steps for strength 1 (D4M: 50)
        sd_guidance: float = 8.0     # classifier-free guidance (D4M: 8)
        dit_guidance: float = 4.0    # (DiT's and D3HR's: 4)
        prompt: str = "{name}"       # SD prompt template; D4M's prompt is the class name
        negative_prompt: str = "cartoon, anime, painting"   # D4M's
        sd_scheduler: str = ""       # a diffusers scheduler class name; "": the model's own (SD v1.5: PNDM)
        dit_start: str = "noised"    # noised: centres of clean latents | inverted: of DDIM-inverted latents
        invert_guidance: float = 1.0  # dit_start=inverted: guidance while inverting (D3HR: 4)
        resolution: int = 0          # px the model works at; 0: its native one (SD v1.5: 512, DiT-XL/2: 256)
        class_map: str = ""          # class list file in the model's class order (ImageNet: LOC_synset_mapping.txt)
        km_expand: int = 1           # MiniBatchKMeans chunk = km_expand x IPC latents (D4M's ImageNet script)
        batch: int = 16              # images per encode / generation batch
        dtype: str = "auto"          # auto: fp16 on CUDA, fp32 on CPU | fp32 | fp16 | bf16 (CUDA only)
        CHOICES = {"decode": ("encoder", "medoid", "sd", "dit"), "dit_start": ("noised", "inverted"),
                   "dtype": ("auto", "fp32", "fp16", "bf16")}
        RANGES = {"restarts": AT_LEAST_1, "max_samples": NON_NEGATIVE, "ae_epochs": AT_LEAST_1,
                  "ae_latent_ch": AT_LEAST_1, "strength": UNIT, "steps": AT_LEAST_1, "sd_guidance": NON_NEGATIVE,
                  "dit_guidance": NON_NEGATIVE, "invert_guidance": NON_NEGATIVE, "resolution": NON_NEGATIVE,
                  "km_expand": AT_LEAST_1, "batch": AT_LEAST_1}

    def __init__(self, cfg=None):
        super().__init__(cfg)
        if self.cfg.encoder not in ENCODERS:  # checked here, before the driver creates any output
            raise DDKitError(f"unknown ddoq encoder {self.cfg.encoder!r}; choose {', '.join(ENCODERS)}")
        if self.cfg.encoder == "vae":
            if not self.cfg.vae:
                raise DDKitError("ddoq encoder=vae needs --set vae=FOLDER (a diffusers AutoencoderKL) or a "
                                 "Hugging Face repo id in the local cache")
            load_vae(self.cfg.vae, self.cfg.vae_subfolder)
        if self.generative:
            diffusion.decoder(self.cfg)

    @property
    def generative(self) -> bool:
        return self.cfg.decode in ("sd", "dit")

    @property
    def needs_teacher(self):
        return self.cfg.encoder == "teacher" and not self.generative

    def coder(self, ctx: Context):
        return ENCODERS[self.cfg.encoder](ctx, self.cfg)

    @torch.no_grad()
    def run(self, ctx: Context, classes: list[int]) -> Output:
        if self.generative:
            return self.run_diffusion(ctx, classes)
        cfg, coder = self.cfg, self.coder(ctx)
        decode = medoid if cfg.decode == "medoid" else coder.decode
        lo, hi = ctx.bounds()
        xs, ys, ws, errs, rand_errs = [], [], [], [], []
        for c in classes:
            idx = need_images(ctx, c, ctx.ipc)
            if cfg.max_samples and len(idx) > cfg.max_samples:
                idx = idx[torch.randperm(len(idx), generator=ctx.gen)[:cfg.max_samples]]
            x_real = ctx.real(idx)
            z_real = coder.encode(x_real).float()
            z = z_real.cpu().numpy()
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.gen))
            centres, assign = kmeans(z, ctx.ipc, cfg.restarts, seed)
            counts = np.bincount(assign, minlength=ctx.ipc).astype(np.float32)
            pick = torch.randperm(len(z), generator=ctx.gen)[:ctx.ipc].numpy()
            errs.append(quantization_error(z, centres, assign))
            rand_errs.append(quantization_error(z, z[pick]))   # random real samples as the quantizer
            img = decode(torch.from_numpy(centres).to(ctx.device), x_real, z_real)
            xs.append(img.cpu().clamp(min=lo.view(1, -1, 1, 1), max=hi.view(1, -1, 1, 1)))
            ys += [c] * ctx.ipc
            ws.append(torch.from_numpy(counts) if cfg.weighted else torch.ones(ctx.ipc))
        return Output(torch.cat(xs), torch.tensor(ys), torch.cat(ws),
                      info={"quantization_error": float(np.mean(errs)),
                            "random_quantization_error": float(np.mean(rand_errs)), "encoder": cfg.encoder,
                            "decode": cfg.decode})

    @torch.no_grad()
    def run_diffusion(self, ctx: Context, classes: list[int]) -> Output:
        """Per class: latents of every real image, D4M's mini-batch k-means, DDOQ's cell masses, and one
        generated image per centre, resized to the data's resolution."""
        cfg = self.cfg
        dec = diffusion.decoder(cfg).place(ctx.device)
        dec.bind(ctx.train.classes)
        size = ctx.train.image_size
        xs, ys, ws, errs, rand_errs = [], [], [], [], []
        desc = f"ddoq {cfg.decode} (classes {classes[0]}-{classes[-1]} of {ctx.train.num_classes})"
        bar = steps(0, len(classes), desc, unit="class", enabled=ctx.progress)
        for i in bar:
            c = classes[i]
            idx = need_images(ctx, c, ctx.ipc)
            if cfg.max_samples and len(idx) > cfg.max_samples:
                idx = idx[torch.randperm(len(idx), generator=ctx.gen)[:cfg.max_samples]]
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.gen)))
            lat = torch.cat([dec.latents(b, c, gen).cpu() for b in ctx.train.batches(idx, cfg.batch, "center")])
            z = lat.flatten(1)[torch.randperm(len(lat), generator=gen)].numpy()   # the stream partial_fit sees
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            centres, assign = minibatch_kmeans(z, ctx.ipc, cfg.km_expand, seed)
            counts = np.bincount(assign, minlength=ctx.ipc).astype(np.float32)
            errs.append(quantization_error(z, centres, assign))
            rand_errs.append(quantization_error(z, z[torch.randperm(len(z), generator=gen)[:ctx.ipc].numpy()]))
            c_lat = torch.from_numpy(centres).view(-1, *lat.shape[1:])
            img = torch.cat([dec.generate(c_lat[j:j + cfg.batch], c, gen).cpu()
                             for j in range(0, len(c_lat), cfg.batch)])
            img = F.interpolate(img, size=(size, size), mode="bicubic", antialias=True).clamp_(0, 1)
            xs.append(ctx.train.normalize(img))
            ys += [c] * ctx.ipc
            ws.append(torch.from_numpy(counts) if cfg.weighted else torch.ones(ctx.ipc))
            bar.set_postfix(images=len(ys))
        bar.close()
        return Output(torch.cat(xs), torch.tensor(ys), torch.cat(ws),
                      info={"quantization_error": float(np.mean(errs)),
                            "random_quantization_error": float(np.mean(rand_errs)), "decode": cfg.decode,
                            "model": cfg.sd_model if cfg.decode == "sd" else cfg.dit_model,
                            "resolution": dec.res, "dtype": str(dec.dtype).removeprefix("torch.")})
