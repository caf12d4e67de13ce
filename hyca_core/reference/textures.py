"""The second reference data set: procedural two-colour textures with the prompt that describes them.

Stripes, waves, checkers, dots, rings and gradients in two of seven colours, fine or coarse, some
oriented; each image also has a random phase the prompt does not name, so one prompt has many
images (the shape scenes of ``data`` are fixed by their prompt). Images go through the same fixed
"VAE" as the shape scenes (``data.encode`` / ``data.decode``). Everything is generated from seeds:
no download, same data on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import COLORS, IMAGE_SIZE, TextEncoder

PATTERNS = ("stripes", "waves", "checkers", "dots", "rings", "gradient")
ORIENTED = ("stripes", "waves", "gradient")
ORIENTATIONS = {"horizontal": (0.0, 1.0), "vertical": (1.0, 0.0), "diagonal": (math.sqrt(0.5), math.sqrt(0.5))}
SCALES = {"fine": 6.0, "coarse": 3.0}  # periods across the image
VOCABULARY = sorted(set(PATTERNS) | {w for c in COLORS for w in c.split()} | set(ORIENTATIONS) | set(SCALES)
                    | {"and"})


@dataclass(frozen=True)
class Texture:
    pattern: str
    color: str
    other: str
    scale: str
    orientation: str  # ignored (and not in the prompt) for patterns without a direction
    phase: float  # in [0, 1): where the pattern starts; not in the prompt

    @property
    def prompt(self) -> str:
        direction = f" {self.orientation}" if self.pattern in ORIENTED else ""
        scale = "" if self.pattern == "gradient" else f"{self.scale} "
        return f"{scale}{self.color} and {self.other}{direction} {self.pattern}"

    @classmethod
    def sample(cls, rng: random.Random) -> "Texture":
        color, other = rng.sample(sorted(COLORS), 2)
        return cls(rng.choice(PATTERNS), color, other, rng.choice(list(SCALES)), rng.choice(list(ORIENTATIONS)),
                   rng.random())


def textures(seed: int, count: int) -> list[Texture]:
    rng = random.Random(seed)
    return [Texture.sample(rng) for _ in range(count)]


def _mix(texture: Texture, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Share of the first colour in [0, 1] at each point of the unit square."""
    periods, phase = SCALES[texture.scale], texture.phase
    ox, oy = ORIENTATIONS[texture.orientation]
    along = x * ox + y * oy
    if texture.pattern == "stripes":
        return (torch.frac(along * periods + phase) < 0.5).float()
    if texture.pattern == "waves":
        return 0.5 + 0.5 * torch.sin(2 * math.pi * (along * periods + phase))
    if texture.pattern == "checkers":
        cells = torch.floor(x * periods + phase) + torch.floor(y * periods + phase)
        return (cells % 2 == 0).float()
    if texture.pattern == "dots":
        u, v = torch.frac(x * periods + phase) - 0.5, torch.frac(y * periods + phase) - 0.5
        return (u * u + v * v <= 0.3 ** 2).float()
    if texture.pattern == "rings":
        cx, cy = 0.5 + 0.3 * (phase - 0.5), 0.5 - 0.3 * (phase - 0.5)
        radius = ((x - cx) ** 2 + (y - cy) ** 2).sqrt()
        return (torch.frac(radius * periods * 1.4) < 0.5).float()
    # gradient: from the first colour to the second along the orientation, its start jittered
    span = ox + oy
    return (1.0 - (along / span + 0.3 * (phase - 0.5))).clamp(0.0, 1.0)


def render(texture: Texture, size: int = IMAGE_SIZE, supersample: int = 2) -> torch.Tensor:
    """RGB image [3, size, size] in [0, 1], anti-aliased by supersampling."""
    n = size * supersample
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    share = _mix(texture, y, x)[None]
    first = torch.tensor(COLORS[texture.color]).view(3, 1, 1)
    second = torch.tensor(COLORS[texture.other]).view(3, 1, 1)
    image = share * first + (1 - share) * second
    return F.avg_pool2d(image[None], supersample)[0]


def text_encoder() -> TextEncoder:
    """The deterministic text encoder of texture prompts (its own vocabulary and seed)."""
    return TextEncoder(vocabulary=VOCABULARY, seed=4321)
