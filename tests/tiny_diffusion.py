"""Tiny random-weight latent diffusion models built from configs and saved as diffusers' folders, for tests and
the decoder benchmark (nothing downloaded): Stable Diffusion (UNet, CLIP text encoder with a tokenizer written
here, VAE, scheduler) and a class-conditional DiT."""
import json
import string

import torch


def _vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                         norm_num_groups=8, sample_size=16)


def make_sd(root, sample_size=8, seed=0):
    """A 16-px Stable Diffusion folder (VAE /2, 4 x 8x8 latents) with a character-level CLIP tokenizer."""
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    torch.manual_seed(seed)
    UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
                         block_out_channels=(8, 16), norm_num_groups=8, cross_attention_dim=16,
                         attention_head_dim=2,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(root / "unet")
    _vae().save_pretrained(root / "vae")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1).save_pretrained(root / "scheduler")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + [c for c in string.ascii_lowercase] + \
        [c + "</w>" for c in string.ascii_lowercase + ","]
    vocab = root / "vocab.json"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    merges = root / "merges.txt"
    merges.write_text("#version: 0.2\n")
    CLIPTokenizer(str(vocab), str(merges), model_max_length=32).save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tokens), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=32, bos_token_id=0,
                                 eos_token_id=1, pad_token_id=1)).save_pretrained(root / "text_encoder")
    return root


def make_dit(root, num_classes=5, sample_size=8, seed=0, id2label=None):
    """A 16-px class-conditional DiT folder (learned sigma, as DiT-XL/2) with its VAE and scheduler."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel
    torch.manual_seed(seed)
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                          num_layers=1, sample_size=sample_size, patch_size=2,
                          num_embeds_ada_norm=num_classes).save_pretrained(root / "transformer")
    _vae().save_pretrained(root / "vae")
    DDIMScheduler(clip_sample=False).save_pretrained(root / "scheduler")
    if id2label:
        (root / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline", "id2label": id2label}))
    return root
