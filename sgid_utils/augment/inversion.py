"""Textual inversion: one new token per class whose embedding is learned so that Stable Diffusion denoises that
class's training images well when prompted with it (DA-Fusion's ``fine_tune.py``, adapted there from diffusers'
textual-inversion example, which diffusers ships only as a script: this is that loop, written out).

Per step, as there: a batch of the class's images (resized to a square, flipped with probability ``flip_p``),
each with a random template from ``TEMPLATES`` around the token; VAE latents (a sample of the latent distribution,
times the VAE's scaling factor); DDPM noise at a random timestep; the UNet's noise prediction against the noise
(epsilon) or the velocity (v-prediction) in mean squared error; AdamW on the text encoder's input embeddings, after
which every row but the token's is put back, so the token alone learns. The VAE, UNet and the rest of the text
encoder never change. Every random draw (image order, template, flip, latent sample, noise, timestep) comes from one
generator seeded per class, so a class's token is the same however many classes a process learns before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# DA-Fusion's fine_tune.py (imagenet_templates_small, from diffusers' textual-inversion example), "object" property.
TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)


def class_token(class_name: str) -> str:
    """The class's placeholder token, as DA-Fusion formats it: '<great_pyrenees>'."""
    return f"<{class_name.replace(' ', '_')}>"


@dataclass(frozen=True)
class InversionSettings:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    flip_p: float
    resolution: int
    initializer_token: str


def initial_embedding(tokenizer, text_encoder, initializer: str) -> torch.Tensor:
    """The initializer word's embedding ("the" is one token of SD's CLIP tokenizer, as fine_tune.py requires); a word
    the tokenizer splits (the smoke profile's byte-level one) starts from the mean of its pieces, our choice."""
    ids = tokenizer.encode(initializer, add_special_tokens=False)
    return text_encoder.get_input_embeddings().weight.detach()[ids].mean(dim=0)


def add_token(tokenizer, text_encoder, token: str, initializer: str) -> int:
    """Add ``token`` (if new) with the initializer word's embedding; its id."""
    start = initial_embedding(tokenizer, text_encoder, initializer)
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens(token)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is set just below
    token_id = tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[token_id] = start
    return token_id


def pixels(images: list[Image.Image], size: int, flips: torch.Tensor) -> torch.Tensor:
    """Images as the VAE takes them: square ``size`` (bicubic, as fine_tune.py's default), flipped where asked,
    scaled to [-1, 1]."""
    out = []
    for image, flip in zip(images, flips):
        image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)


def own_text_encoder(pipe):
    """A copy of the pipeline's tokenizer and text encoder (float32) that new tokens can go into: the loaded
    pipeline is cached and shared by the stages of a process (``models.loading``), so it is never changed."""
    import copy

    return copy.deepcopy(pipe.tokenizer), copy.deepcopy(pipe.text_encoder).to(torch.float32)


def batch_loss(tokenizer, text_encoder, vae, unet, noise_scheduler, images: list[Image.Image], token: str,
               settings: InversionSettings, rng: torch.Generator) -> torch.Tensor:
    """One step's loss on ``images``: flips, templates, latent sample, noise and timesteps drawn from ``rng``."""
    device = unet.device
    flips = torch.rand(len(images), generator=rng) < settings.flip_p
    prompts = [TEMPLATES[int(i)].format(token) for i in torch.randint(len(TEMPLATES), (len(images),), generator=rng)]
    x = pixels(images, settings.resolution, flips).to(device, vae.dtype)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        latents = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=rng).to(device, vae.dtype)
        latents = latents * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=rng).to(device, latents.dtype)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(images),), generator=rng).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids.to(device)
    states = text_encoder(ids)[0].to(unet.dtype)
    prediction = unet(noisy, timesteps, states).sample
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(prediction.float(), target.float())


def learn_token(tokenizer, text_encoder, vae, unet, noise_scheduler, images: list[Image.Image], token: str,
                settings: InversionSettings, seed: int) -> tuple[torch.Tensor, list[float]]:
    """Learn ``token``'s embedding on ``images``; the embedding (float32, on the CPU) and the loss of every step.

    ``tokenizer`` and ``text_encoder`` (``own_text_encoder``) receive the token; the VAE and UNet are only read;
    ``noise_scheduler``: a DDPM scheduler with the model's training configuration.
    """
    token_id = add_token(tokenizer, text_encoder, token, settings.initializer_token)
    embeddings = text_encoder.get_input_embeddings()
    original = embeddings.weight.detach().clone()
    keep = torch.arange(len(tokenizer), device=original.device) != token_id
    frozen = [p.requires_grad for p in text_encoder.parameters()]
    text_encoder.requires_grad_(False)
    embeddings.weight.requires_grad_(True)
    optimizer = torch.optim.AdamW([embeddings.weight], lr=settings.lr, betas=(0.9, 0.999),
                                  weight_decay=settings.weight_decay, eps=1e-8)
    rng = torch.Generator().manual_seed(seed)
    losses = []
    order: list[int] = []
    text_encoder.train()
    try:
        for _ in range(settings.steps):
            while len(order) < settings.batch_size:  # passes over the class's images, each in a fresh order
                order += torch.randperm(len(images), generator=rng).tolist()
            batch, order = order[:settings.batch_size], order[settings.batch_size:]
            loss = batch_loss(tokenizer, text_encoder, vae, unet, noise_scheduler, [images[i] for i in batch], token,
                              settings, rng)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():  # only the token's row learns
                embeddings.weight[keep] = original[keep]
            losses.append(float(loss.detach()))
    finally:
        text_encoder.eval()
        embeddings.weight.requires_grad_(False)
        for p, was in zip(text_encoder.parameters(), frozen):
            p.requires_grad_(was)
    return embeddings.weight[token_id].detach().float().cpu().clone(), losses
