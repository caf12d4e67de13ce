"""The reference data: rendered scenes of a coloured shape, with the prompt that describes them,
a deterministic text encoder, and the fixed "VAE" between images and 16-channel latents.

Everything is generated from seeds: no download, same data on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle", "ring")
COLORS = {
    "red": (0.9, 0.15, 0.1), "green": (0.15, 0.75, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.2, 0.8), "white": (0.95, 0.95, 0.95), "orange": (0.95, 0.55, 0.1),
}
SIZES = {"small": 0.22, "large": 0.36}
POSITIONS = {  # centre (x, y) in [0, 1]
    "top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}
BACKGROUNDS = {"dark": (0.08, 0.08, 0.1), "gray": (0.45, 0.45, 0.45)}


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str
    position: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.size} {self.color} {self.shape} at the {self.position} on a {self.background} background"

    @classmethod
    def sample(cls, rng: random.Random) -> "Scene":
        return cls(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)),
                   rng.choice(list(POSITIONS)), rng.choice(list(BACKGROUNDS)))


def scenes(seed: int, count: int) -> list[Scene]:
    rng = random.Random(seed)
    return [Scene.sample(rng) for _ in range(count)]


def render(scene: Scene, size: int = IMAGE_SIZE, supersample: int = 4) -> torch.Tensor:
    """RGB image [3, size, size] in [0, 1], anti-aliased by supersampling."""
    n = size * supersample
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    cx, cy = POSITIONS[scene.position]
    r = SIZES[scene.size]
    dx, dy = x - cx, y - cy
    if scene.shape == "circle":
        mask = dx * dx + dy * dy <= r * r
    elif scene.shape == "ring":
        d = (dx * dx + dy * dy).sqrt()
        mask = (d <= r) & (d >= 0.55 * r)
    elif scene.shape == "square":
        mask = (dx.abs() <= 0.8 * r) & (dy.abs() <= 0.8 * r)
    else:  # triangle pointing up
        h = r * 1.7
        top, bottom = cy - h / 2, cy + h / 2
        half = (y - top) / h * r
        mask = (y >= top) & (y <= bottom) & (dx.abs() <= half)
    image = torch.tensor(BACKGROUNDS[scene.background]).view(3, 1, 1).expand(3, n, n).clone()
    image[:, mask] = torch.tensor(COLORS[scene.color]).view(3, 1)
    return F.avg_pool2d(image[None], supersample)[0]


# -- the fixed "VAE": pixel unshuffle to 12 channels, 4 zero channels to reach FLUX's 16 -------------
LATENT_CHANNELS = 16


def encode(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> latents [B, 16, H/2, W/2], roughly unit scale."""
    x = F.pixel_unshuffle(images * 2.0 - 1.0, 2)
    return torch.cat([x, torch.zeros(x.shape[0], LATENT_CHANNELS - x.shape[1], *x.shape[2:])], 1)


def decode(latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, 16, H, W], or one-frame video latents [B, 16, 1, H, W], -> images [B, 3, 2H, 2W]."""
    if latents.ndim == 5:
        latents = latents[:, :, 0]
    return ((F.pixel_shuffle(latents[:, :12], 2) + 1.0) / 2.0).clamp(0.0, 1.0)


# -- the deterministic text encoder -----------------------------------------------------------------
VOCABULARY = sorted({w for s in SHAPES for w in s.split()} | {w for c in COLORS for w in c.split()}
                    | set(SIZES) | {w for p in POSITIONS for w in p.split()} | set(BACKGROUNDS)
                    | {"a", "at", "the", "on", "background"})
CONTEXT_TOKENS = 12
TEXT_DIM = 32


class TextEncoder:
    """Words -> fixed pseudo-random embeddings plus a sinusoidal position code. No weights to ship:
    the table is regenerated from its seed. Unknown words map to a shared 'unknown' vector."""

    def __init__(self, dim: int = TEXT_DIM, tokens: int = CONTEXT_TOKENS, seed: int = 1234,
                 vocabulary: list[str] = VOCABULARY):
        g = torch.Generator().manual_seed(seed)
        self.dim, self.tokens = dim, tokens
        self.index = {w: i + 1 for i, w in enumerate(vocabulary)}  # 0: unknown
        self.table = torch.randn(len(vocabulary) + 1, dim, generator=g)
        position = torch.arange(tokens, dtype=torch.float32)[:, None]
        freq = torch.exp(-math.log(100.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.position = torch.zeros(tokens, dim)
        self.position[:, 0::2], self.position[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> context [B, tokens, dim] (zero-padded), pooled [B, dim]. An empty prompt is all zeros."""
        context = torch.zeros(len(prompts), self.tokens, self.dim)
        pooled = torch.zeros(len(prompts), self.dim)
        for b, prompt in enumerate(prompts):
            words = prompt.lower().split()[: self.tokens]
            if not words:
                continue
            ids = torch.tensor([self.index.get(w, 0) for w in words])
            context[b, : len(words)] = self.table[ids] + 0.5 * self.position[: len(words)]
            pooled[b] = self.table[ids].mean(0)
        return context, pooled
